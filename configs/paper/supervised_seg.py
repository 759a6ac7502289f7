"""S4MI supervised segmentation baseline (DEDL `Segmentation using APP.ipynb`): a U-Net
trained on 10/30/50/70/99/100% of the masks of ISIC-2017, Dermofit or Dermatomyositis, with DEDL's
autoencoder post-processing (APP) term by default; the baseline cross teaching is compared with.

    python -m s4mi_jax.main --config=configs/paper/supervised_seg.py:dataset=dermofit,label_fraction=1.0,seed=1234 \\
        --config.data.root=/data/dermofit_seg --workdir=runs/s4mi_seg/dermofit/supervised/frac_1.0/seed_1234
    # the plain U-Net (no APP): exactly cross teaching's CNN branch trained on the labeled images only
    python -m s4mi_jax.main --config=configs/paper/supervised_seg.py:dataset=dermofit,label_fraction=0.5,app=False ...

Data layout: configs/paper/datasets.py (SEG_DATASETS). Arguments: dataset, label_fraction (0.1 ...
0.99 as cross teaching, and 1.0), seed (73, 211, 1234), app (True | False).

Paper / DEDL settings kept: loss CE_w(U(x), y) + CE_w(APP(U(x)), y) with APP's own Adam 1e-3 (APP
only in training; inference is the U-Net alone; gradients of the APP term flow into the U-Net); U-Net
Adam 3.6e-4 with coupled L2 1e-5 and CosineAnnealingLR(T_max=50, eta_min=3.4e-4) per iteration (so
the lr is almost constant); batch 16; 50 epochs of the labeled images; model selection on the best
validation IoU, dataset-level (DEDL's micro IoU: `iou_micro`); paired augmentation.

Where this differs from the paper / reference code:
- the U-Net is SSL4MIS's ([16..256], as cross teaching's CNN), not smp's U-Net with an ImageNet
  EfficientNet/ResNet encoder, depth 3, decoder (256, 128, 64) and scSE attention (not offered; a
  ResNet-encoder U-Net is `--config.model.name=resnet50`, random or SSL-pretrained via `init_from`);
- the segmentation loss is S4MI's ½[CE_w + Dice] plus the APP CE (DEDL: CE_w summed, no Dice), with
  median-frequency weights of the labeled training masks (DEDL: fixed [0.1479, 0.8521]);
- 224x224 input for every dataset, as cross teaching (DEDL: 480x480 Dermatomyositis DAPI tiles);
- no early stopping (DEDL stops after more than 5 rises of the validation loss): 50 epochs run and
  the best validation checkpoint is tested; DEDL's augmentation (rotation 3°, flips, sampled
  independently for image and mask: a bug) is replaced by the paired SSL4MIS augmentation;
- labeled subsets, splits, empty masks: as configs/paper/cross_teaching.py.
"""

import ml_collections

from configs.paper import datasets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = datasets.seg_args(arg, app=True)
    config = datasets.seg_config("segment", arg)
    config.app.enabled = arg.app
    config.batch_size = 16
    config.optim.update(min_lr=3.4e-4)  # DEDL's eta_min; base 3.6e-4, T_max 50, per iteration.
    config.total_steps = None
    config.total_epochs = 50.0
    config.select_metric = "iou_micro"
    return config
