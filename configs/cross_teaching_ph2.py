"""Semi-supervised segmentation, trainer `cross_teaching` (configs/common.py `segmentation_config`):
a U-Net and a Swin-UNet, each taught by the other's predictions on unlabeled images.

    python -m s4mi_jax.main --config=configs/cross_teaching_ph2.py:label_fraction=0.5 --workdir=runs/ct

Expected: the embedded 12-image nuclei sample (DSB2018, CC0; s4mi_jax/data/sample/nuclei) in 64x64
tiles, half of the training images' masks used (118 labeled tiles, 102 unlabeled; val 16, test 32 tiles),
U-Net width 16 + Swin-UNet embed 48 (8.75M parameters together), 1000 steps. The 1000 steps were not
measured (the shared 2-core CPU was at load 6-30); a 200-step run, the command above with
`--config.total_steps=200 --config.eval_every=50 --config.ckpt_every=100` (19 min), gave on the test
tiles: U-Net (`test`, step 200) Dice 0.956, IoU 0.924, HD95 0.53 px, IoU (micro) 0.862; Swin-UNet
(`test_transformer`, step 150) Dice 0.563, IoU (micro) 0.0004: after 200 steps it marks almost no
nucleus pixel (tiles without nuclei score 1). Two test images: this shows the pipeline works.

    python -m s4mi_jax.main --config=configs/cross_teaching_ph2.py:ph2,label_fraction=0.5,seed=0 \\
        --config.data.root=/path/to/ph2_dermoscopy --workdir=runs/cross_teaching_ph2   # PH2, resized
    python -m s4mi_jax.main --config=configs/cross_teaching_ph2.py:nuclei \\
        --config.data.root=/path/to/dsb2018_nuclei                                   # DSB2018, tiled
    python -m s4mi_jax.main --config=configs/cross_teaching_ph2.py:lung \\
        --config.data.root=/path/to/covid_cxr_lung_segmentation                      # grayscale lungs
    python -m s4mi_jax.main --config=configs/cross_teaching_ph2.py:local     # tiny smoke run
    python -m s4mi_jax.main --config=configs/cross_teaching_ph2.py:ph2,reference \\
        --config.data.root=/path/to/ph2_dermoscopy   # S4MI's settings: 224 px, 10k iterations

The dataset variants need `--config.data.root` (a run without it stops with one line); where each
dataset comes from, and results on PH2: docs/segmentation.md.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return common.segmentation_config("cross_teaching", arg)
