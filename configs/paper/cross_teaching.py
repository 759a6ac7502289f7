"""S4MI semi-supervised segmentation (S4MI's `train_CT_between_cnn_transformer_2D.py`, adapted from SSL4MIS):
cross teaching between a U-Net and a Swin-UNet at 10/30/50/70/99% of the masks of ISIC-2017, Dermofit
or Dermatomyositis; the rest of the training images are its unlabeled data.

    python -m s4mi_jax.main --config=configs/paper/cross_teaching.py:dataset=isic2017,label_fraction=0.5,seed=1234 \\
        --config.data.root=/data/isic2017_seg --workdir=runs/s4mi_seg/isic2017/cross_teaching/frac_0.5/seed_1234

Data layout: configs/paper/datasets.py (SEG_DATASETS). Arguments: dataset (isic2017 | dermofit |
dermatomyositis | dermatomyositis_tiled), label_fraction (0.1, 0.3, 0.5, 0.7, 0.99), seed (73, 211,
1234: the paper averages the three).

Paper / reference settings kept: 224x224 input; U-Net [16, 32, 64, 128, 256] with encoder dropout
[0.05, 0.1, 0.2, 0.3, 0.5]; Swin-UNet Swin-T lite (patch 4, embed 96, depths [2,2,2,2], heads
[3,6,12,24], window 7, drop-path 0.2); batch 8 labeled + 8 unlabeled in one pass per network; loss
½[CE_w + Dice] + λ(t)·Dice(p, argmax of the other network), λ(t) = 0.1·exp(−5(1−⌊t/150⌋/200)²), no
threshold, no EMA; per network Adam 3.6e-4 with coupled L2 1e-5 and CosineAnnealingLR(T_max=50,
eta_min=5e-6) stepped per iteration (a periodic cosine); 10,000 iterations; validation every 200 on
mean per-image IoU, the best checkpoint per network; the U-Net is the method's result (`test`),
the Swin-UNet `test_transformer`.

Where this differs from the paper / reference code:
- the Swin-UNet starts from random weights (the reference loads ImageNet swin_tiny_patch4_window7_224
  into encoder and decoder): give pretrained weights with `--config.init_from=` only where the
  trainer supports it (not yet for cross teaching);
- the labeled subset is a nested, stratified, patient-grouped manifest; the reference takes the first
  N_l files in sorted-name order (class-biased on Dermofit), and its "99p" is |train| − 1 images;
- median-frequency class weights are counted on the labeled training masks only (the reference
  counts every mask file, validation and test included);
- images resized bilinearly once, masks nearest (the reference zooms both with order 0); no Rnorm
  for Dermofit;
- empty ground-truth masks count in every metric (the reference skips them but divides by all);
- splits carved 70/10/20 from data.root (ISIC-2017: the official split needs `data.manifest`);
- checkpoints every 1000 iterations (the reference: 3000).
"""

import ml_collections

from configs.paper import datasets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return datasets.seg_config("cross_teaching", datasets.seg_args(arg))
