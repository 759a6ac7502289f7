"""Unsupervised segmentation, PiCIE (trainer `picie`; Cho et al., CVPR 2021): no mask is trained on.

    python -m s4mi_jax.main --config=configs/picie_ph2.py --workdir=runs/picie

Expected: the embedded 12-image nuclei sample (DSB2018, CC0; s4mi_jax/data/sample/nuclei) in 64x64
tiles: 220 training tiles (masks unread), val 16, test 32; ResNet-18 width 16 + FPN (0.73M
parameters), K=2, 20 epochs (540 steps); 49 min on a 2-core CPU shared at load 8-30. Test (clusters
matched to classes on validation): pixel accuracy 0.982, mIoU 0.496, per-image Dice 0.571 (tiles
with no nucleus and no prediction count as 1), IoU (micro) 0.011: the cluster matched to nuclei
covers almost none of them (nuclei are 1.9% of the test pixels). Label-free baselines in
results.json: all foreground mIoU 0.009, per-image mean-grey threshold mIoU 0.363. A smoke test of
the pipeline on 12 images, not a PiCIE result.

    python -m s4mi_jax.main --config=configs/picie_ph2.py:ph2,seed=0 \\
        --config.data.root=/path/to/ph2_dermoscopy --workdir=runs/picie_ph2   # PH2, resized
    python -m s4mi_jax.main --config=configs/picie_ph2.py:nuclei --config.data.root=/path/to/dsb2018_nuclei
    python -m s4mi_jax.main --config=configs/picie_ph2.py:local     # tiny smoke run
    python -m s4mi_jax.main --config=configs/picie_ph2.py --config.init_from=runs/simclr_x  # SSL encoder

The dataset variants need `--config.data.root` (a run without it stops with one line); where each
dataset comes from, and the PH2 result: docs/segmentation.md. The data, manifest, augmentation and
evaluation settings are the segmentation ones (common.segmentation_config); no mask of the training
pool is read for training, so `label_fraction` changes nothing (the pool is the manifest's labeled +
unlabeled training images).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.segmentation_config("picie", arg)
    local = "local" in (arg or "").split(",")
    # PiCIE: ResNet (ResNet-34 there; 18 here) + FPN, 128-d features. The CIFAR stem keeps the
    # resolution of small (64 px) images; set stem="imagenet" (and init_from) for large ones.
    config.model = common.seg_model_config("resnet18", width=4 if local else 16, stem="cifar")
    config.model.feature_dim = 8 if local else 128
    config.picie = dict(
        num_clusters=2,  # K_train = K_test = 2 (foreground / background), as S4MI.
        kmeans_batches=2 if local else 10,  # Batches clustered at each epoch start.
        kmeans_iters=20,  # Lloyd iterations on the first of them (PiCIE: 20-32).
        crop_scale=(0.25, 1.0),  # Area fraction of the equivariance crop.
    )
    # PiCIE: Adam 1e-4, no weight decay, constant learning rate.
    config.optim = common.optim_config("adam", 1e-4, min_lr=1e-4)
    # CE class weights from the batch's cluster labels: "frequency" (PiCIE's counts / counts.sum()),
    # "inverse" (class-balanced, 1 / count) or "none".
    config.loss = dict(class_weights="frequency")
    config.batch_size = 8
    config.total_steps = ml_collections.config_dict.placeholder(int)
    config.total_epochs = 1.0 if local else 20.0
    config.log_every = 2 if local else 20
    config.eval_every = 2 if local else 100  # Monitoring only: no model selection.
    config.ckpt_every = 2 if local else 100
    return config
