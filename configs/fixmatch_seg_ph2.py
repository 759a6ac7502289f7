"""Semi-supervised segmentation, trainer `fixmatch_seg` (configs/common.py `segmentation_config`).

    python -m s4mi_jax.main --config=configs/fixmatch_seg_ph2.py:label_fraction=0.5 --workdir=runs/fixmatch_seg

Expected: the embedded 12-image nuclei sample (DSB2018, CC0; s4mi_jax/data/sample/nuclei) in 64x64
tiles, half of the training images' masks used (118 labeled tiles, 102 unlabeled; val 16, test 32 tiles),
U-Net width 16, 8 labeled + 8 unlabeled tiles per step, 1000 steps. The 1000 steps were not measured
(the shared 2-core CPU was at load 30); a 200-step run, the command above with
`--config.total_steps=200 --config.eval_every=50 --config.ckpt_every=100` (23 min there, 7.5 of them
compiling), gave on the test tiles (weights of step 150, selected on validation IoU): Dice 0.880, IoU
0.842, HD95 4.08 px, IoU (micro) 0.704. Two test images: this shows the pipeline works, nothing more.

    python -m s4mi_jax.main --config=configs/fixmatch_seg_ph2.py:ph2,label_fraction=0.5,seed=0 \\
        --config.data.root=/path/to/ph2_dermoscopy --workdir=runs/fixmatch_seg_ph2   # PH2, resized
    python -m s4mi_jax.main --config=configs/fixmatch_seg_ph2.py:nuclei \\
        --config.data.root=/path/to/dsb2018_nuclei                                 # DSB2018, tiled
    python -m s4mi_jax.main --config=configs/fixmatch_seg_ph2.py:lung \\
        --config.data.root=/path/to/covid_cxr_lung_segmentation                    # grayscale lungs
    python -m s4mi_jax.main --config=configs/fixmatch_seg_ph2.py:local     # tiny smoke run

The dataset variants need `--config.data.root` (a run without it stops with one line); where each
dataset comes from, and results on PH2: docs/segmentation.md.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return common.segmentation_config("fixmatch_seg", arg)
