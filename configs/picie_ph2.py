"""Unsupervised segmentation, PiCIE (trainer `picie`; Cho et al., CVPR 2021), on PH2 by default.

python -m s4mi_jax.main --config=configs/picie_ph2.py:seed=0 --workdir=runs/picie_ph2
python -m s4mi_jax.main --config=configs/picie_ph2.py:nuclei    # DSB2018 nuclei (tiled)
python -m s4mi_jax.main --config=configs/picie_ph2.py:local     # tiny smoke run
python -m s4mi_jax.main --config=configs/picie_ph2.py --config.init_from=runs/simclr_ph2  # SSL encoder

The data, manifest, augmentation and evaluation settings are the segmentation ones
(common.segmentation_config); no mask of the training pool is read for training, so `label_fraction`
changes nothing (the pool is the manifest's labeled + unlabeled training images).
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
