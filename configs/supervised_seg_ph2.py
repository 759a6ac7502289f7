"""Segmentation, trainer `segment` (configs/common.py `segmentation_config`), on PH2 by default.

python -m s4mi_jax.main --config=configs/supervised_seg_ph2.py:label_fraction=0.5,seed=0 --workdir=runs/supervised_seg_ph2
python -m s4mi_jax.main --config=configs/supervised_seg_ph2.py:nuclei    # DSB2018 nuclei (tiled)
python -m s4mi_jax.main --config=configs/supervised_seg_ph2.py:lung      # COVID CXR lungs (grayscale)
python -m s4mi_jax.main --config=configs/supervised_seg_ph2.py:local     # tiny smoke run
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return common.segmentation_config("segment", arg)
