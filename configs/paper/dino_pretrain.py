"""S4MI's DINO self-supervised pretraining on ISIC-2017, Dermofit or
Dermatomyositis-style data, with a ResNet-50 or ViT-B/16 backbone at 384x384.

    python -m s4mi_jax.main --config=configs/paper/dino_pretrain.py:dataset=isic2017,backbone=vit_base \\
        --config.data.root=/data/isic2017 --workdir=runs/s4mi/isic2017/dino_vit_pretrain

Then fine-tune with configs/paper/finetune.py (pretrain=dino, the same backbone; the teacher encoder
is loaded). Data layout: configs/paper/datasets.py. Arguments: dataset, backbone (resnet50 |
vit_base), seed (default 77); pretrain and label_fraction are accepted and ignored.

S4MI's DINO settings are not in its released code: its README points to lucidrains/vit-pytorch `Dino`,
whose defaults this config takes where our (official-style) DINO can express them: 2 global crops (scale
0.5-1) and 2 local crops (0.05-0.4), all at the same 384 px input; teacher temperature 0.04, centre
momentum 0.9; projector hidden width 256 with K = 65336 outputs (sic, lucidrains); Adam 3e-4 (its
README example); batch 16 and 100 epochs as CASS's comparison; seed 77.

Where it differs from lucidrains (and the paper's unknown settings):
- the student sees every crop and the teacher the global ones (official DINO); lucidrains' student sees
  only the local crops;
- student temperature 0.1 (official) instead of lucidrains' 0.9;
- teacher momentum on a cosine from 0.9 to 1 (official schedule from lucidrains' fixed 0.9);
- the last layer is frozen for the first epoch and gradients are not clipped (lucidrains: neither);
- random initialisation (timm ImageNet weights in the paper; pretraining does not load them yet).
"""

import ml_collections

from configs import common
from configs.paper import datasets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = datasets.args(arg)
    config = datasets.pretrain_config("dino", arg)
    config.aug.update(
        jitter_prob=0.3,  # lucidrains: ColorJitter(0.8, 0.8, 0.8, 0.2) with p=0.3
        jitter_strength=1.0,
        grayscale_prob=0.2,
        blur_prob=0.2,
        num_global_crops=2,
        global_crop_scale=(0.5, 1.0),
        num_local_crops=2,
        local_image_size=384,
        local_crop_scale=(0.05, 0.4),
        global_blur_prob=(0.2, 0.2),
        local_blur_prob=0.2,
    )
    config.model = datasets.backbone_config(arg.backbone, 384)
    config.model.image_size = config.aug.get_ref("image_size")
    config.model.update(
        head_out_dim=65336,
        head_hidden_dim=256,
        head_bottleneck_dim=256,
        head_layers=4,
        norm_last_layer=True,
    )
    config.loss = dict(
        student_temp=0.1,
        teacher_temp=0.04,
        warmup_teacher_temp=0.04,
        teacher_temp_warmup_epochs=0.0,
        teacher_momentum=0.9,
        center_momentum=0.9,
    )
    config.optim = common.optim_config("adam", 3e-4)
    config.optim.freeze_last_layer_epochs = 1.0
    return config
