"""S4MI/CASS self-supervised pretraining (CASS, Singh et al., arXiv 2206.04170; `CASS.ipynb`) on
ISIC-2017, Dermofit or Dermatomyositis-style data: a ResNet-50 and a ViT-B/16 trained together at 384x384.

    python -m s4mi_jax.main --config=configs/paper/cass_pretrain.py:dataset=isic2017 \\
        --config.data.root=/data/isic2017 --workdir=runs/s4mi/isic2017/cass_pretrain

Then fine-tune either branch at 1/10/100% with configs/paper/finetune.py (pretrain=cass). The data
layout is in configs/paper/datasets.py. Arguments: dataset (isic2017 | dermofit | dermatomyositis),
seed (default 77); the others (backbone, pretrain, label_fraction) are accepted and ignored, so one
`--variant` serves a whole launch/sweep.py run.

Paper settings (CASS.ipynb): one augmented image through both networks, `2 - 2 cos` between their
1000-way outputs (no projection head: `model.head.raw_logits`), Adam lr 1e-3, torch
CosineAnnealingLR(T_max=16, eta_min=1e-6) stepped every iteration (a periodic cosine, period 32 steps), batch 16, 100 epochs, seed 77, input 384.

Where this config and the reference code differ from the paper (deliberately):
- gradients are zeroed every step; CASS.ipynb never calls zero_grad() (they accumulate). Parity:
  `--config.optim.never_zero_grad=True` (as configs/cass_chest.py:reference);
- SSL runs on every training image (labeled or not, never a val/test patient); the latest notebook
  pretrains on the labeled subset only, which would leak the label fraction into pretraining;
- both networks start from random weights: the paper starts from timm's ImageNet resnet50 and
  vit_base_patch16_384, and pretraining does not load `init_from` weights yet (fine-tuning does);
- the notebook wraps Adam in torchcontrib SWA that never averages: plain Adam here;
- augmentation: see datasets.paper_aug.
"""

import ml_collections

from configs import common
from configs.paper import datasets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = datasets.args(arg)
    config = datasets.pretrain_config("cass", arg)
    config.model = dict(
        cnn=datasets.backbone_config("resnet50", 384),
        vit=datasets.backbone_config("vit_base", 384),
        # raw_logits: compare the networks' own 1000-way outputs (the paper); the MLP fields are unused.
        head=dict(raw_logits=True, layers=2, hidden_dim=512, out_dim=128, logit_dim=1000),
    )
    config.model.cnn.image_size = config.aug.get_ref("image_size")
    config.model.vit.image_size = config.aug.get_ref("image_size")
    config.optim = common.optim_config(
        "adam", 1e-3, schedule="periodic_cosine", cosine_period_steps=16, min_lr=1e-6
    )
    return config
