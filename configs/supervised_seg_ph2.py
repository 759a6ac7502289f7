"""Supervised segmentation, trainer `segment` (configs/common.py `segmentation_config`): a U-Net.

    python -m s4mi_jax.main --config=configs/supervised_seg_ph2.py --workdir=runs/supervised_seg

Expected: the embedded 12-image nuclei sample (DSB2018, CC0; s4mi_jax/data/sample/nuclei), tiled into
64x64 tiles: 220 training, 16 validation and 32 test tiles (images never straddle splits); U-Net width
16, 1000 steps, seed 0; 8 min on a loaded 2-core CPU. Test (the step-1000 weights, selected on
validation IoU): Dice 0.956, IoU 0.926, HD95 0.75 px, IoU (micro) 0.831. Two test images: this shows
the pipeline works, not how well a U-Net segments nuclei.

    python -m s4mi_jax.main --config=configs/supervised_seg_ph2.py:ph2,label_fraction=0.5,seed=0 \\
        --config.data.root=/path/to/ph2_dermoscopy --workdir=runs/supervised_seg_ph2  # PH2, resized
    python -m s4mi_jax.main --config=configs/supervised_seg_ph2.py:nuclei \\
        --config.data.root=/path/to/dsb2018_nuclei                                    # DSB2018, tiled
    python -m s4mi_jax.main --config=configs/supervised_seg_ph2.py:lung \\
        --config.data.root=/path/to/covid_cxr_lung_segmentation                       # grayscale lungs
    python -m s4mi_jax.main --config=configs/supervised_seg_ph2.py:local     # tiny smoke run

The dataset variants need `--config.data.root` (a run without it stops with one line); where each
dataset comes from, and results on PH2: docs/segmentation.md.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return common.segmentation_config("segment", arg)
