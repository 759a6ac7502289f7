"""Linear probe of a frozen pretrained encoder on chest X-rays at a label fraction (configs/common.py).

    python -m s4mi_jax.main --config=configs/linear_probe_chest.py:label_fraction=0.1,seed=0 \
        --config.data.root=/path/to/chest_xray_pneumonia --config.init_from=runs/simclr_chest --workdir=runs/linear_probe_10
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return common.classification_config("linear_probe", arg)
