"""CASS pretraining on chest X-rays (a CNN and a ViT trained together), then a linear probe of each.

CASS starts both networks pretrained, as the original always does (timm ImageNet weights); from random
initialisation its loss (`2 - 2 cos` between the two networks, no negatives) is minimised by both
outputting one constant, and they do (the collapse alarm says so). Without downloads, the default starts
from this project's own self-supervised runs of the same data (no labels used): the CNN from SimCLR,
the ViT from SimCLR too (DINO does not hold at these widths: docs/self_supervised.md). So, on a fresh clone:

    python -m s4mi_jax.main --config=configs/simclr_chest.py          # -> runs/simclr_chest (the CNN)
    python -m s4mi_jax.main --config=configs/simclr_chest.py:vit      # -> runs/simclr_chest_vit (the ViT)
    python -m s4mi_jax.main --config=configs/cass_chest.py            # embedded sample, CPU, minutes
    python -m s4mi_jax.main --config=configs/cass_chest.py:local      # tiny smoke run (tests, CI; random start)
    python -m s4mi_jax.main --config=configs/cass_chest.py:reference  # the released notebook's recipe
    python -m s4mi_jax.main --config=configs/cass_chest.py:research \\
        --config.data.root=/data/chest_xray_pneumonia --workdir=/mnt/shared/runs/X \\
        --config.model.cnn.init_from=/weights/resnet50_a1_in1k.safetensors \\
        --config.model.vit.init_from=/weights/vit_base_patch16_384.safetensors  # ResNet-50 + ViT-B/16 @384

Expected: no collapse warning; both branches' linear probes beat the random-init probe of the same network
(docs/self_supervised.md: the `:local` sweep on the chest X-rays). Fine-tune or probe either branch at a label
fraction with configs/{finetune,linear_probe}_chest.py and `--config.init_from=<this workdir>
--config.init_encoder=cnn/encoder` (or `vit/encoder`, with `--config.model.name=vit` and this config's
ViT fields).

Source: CASS (Singh et al.), its released notebook CASS.ipynb. Default: the method as described: a
width-16 ResNet-18 and a 6-block ViT (patch 8, width 192) at 64x64, each with a 2-layer MLP projection
head to 128-d, `2 - 2 cos` between them, Adam 1e-3 with warm-up + cosine, gradients fresh every step,
SSL on all training images. `init_from` of each network: a workdir, a checkpoint, a weights file, or
"random" (collapses). `reference`: CASS.ipynb's settings: batch 16, Adam 1e-3, torch
CosineAnnealingLR(T_max=16, eta_min=1e-6) stepped per iteration (periodic), the networks' raw 1000-way
outputs compared (no projection head), gradients never zeroed (the notebook's missing `zero_grad()`),
100 epochs. `research`: ResNet-50 + ViT-B/16 at 384x384, bf16 compute, from timm's ImageNet weights
(`timm.create_model("resnet50" / "vit_base_patch16_384", pretrained=True)` in the notebook), which
are not shipped: the run stops with one line naming the missing file.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, local=False, reference=False, research=False)
    config = common.run_config()
    config.trainer = "cass"
    config.data = common.pretrain_data_config()

    # One view per image, the supervised recipe (DEDL's `Supervised.ipynb`): both networks see the
    # same augmented image.
    config.aug = common.aug_config(image_size=64)
    config.aug.update(crop_scale=(0.5, 1.0), jitter_prob=0.3, blur_prob=0.0, grayscale_prob=0.0)
    config.model = dict(
        cnn=common.encoder_config("resnet18", width=16),
        vit=common.encoder_config(
            "vit", patch_size=8, embed_dim=192, depth=6, num_heads=3, drop_path=0.1
        ),
        head=dict(raw_logits=False, layers=2, hidden_dim=512, out_dim=128, logit_dim=1000),
    )
    config.model.cnn.image_size = config.aug.get_ref("image_size")
    config.model.vit.image_size = config.aug.get_ref("image_size")
    # Pretrained starts (see the docstring): the default commands' workdirs of SimCLR and SimCLR:vit.
    config.model.cnn.update(init_from="runs/simclr_chest", init_encoder="encoder")
    config.model.vit.update(init_from="runs/simclr_chest_vit", init_encoder="encoder")
    config.optim = common.optim_config("adam", 1e-3, warmup_epochs=5.0, min_lr=1e-6)
    config.batch_size = 64
    config.total_epochs = 100.0
    config.log_every = 10
    config.ckpt_every = 100
    config.eval = dict(linear_probe=True, probe_at_init=True, batch_size=64, l2=1e-3)

    if arg.reference:
        config.model.head.raw_logits = True
        config.optim.update(
            schedule="periodic_cosine", cosine_period_steps=16, never_zero_grad=True
        )
        config.batch_size = 16
    if arg.local:  # Seconds on a CPU: for tests and CI.
        config.model.cnn.width = 8
        config.model.vit.update(embed_dim=32, depth=2, num_heads=2)
        config.model.head.update(hidden_dim=32, out_dim=16, logit_dim=64)
        # Smoke runs of the machinery start at random (they collapse; the alarm says so). The sweep
        # in docs/self_supervised.md passes SimCLR:local / SimCLR:local,vit workdirs instead.
        config.model.cnn.init_from = "random"
        config.model.vit.init_from = "random"
        config.aug.image_size = 32
        config.batch_size = 16
        config.total_steps = 6
        config.optim.warmup_epochs = 1.0
        config.log_every = 2
        config.ckpt_every = 3
        config.eval.update(batch_size=32, probe_at_init=False)
    if arg.research:
        config.model.cnn.update(name="resnet50", width=64, dtype="bfloat16")
        config.model.vit.update(name="vit_base", patch_size=16, dtype="bfloat16")
        config.aug.image_size = 384
        config.data.num_workers = 8
        config.aug.on_device = True  # Host cores would be the bottleneck (BENCHMARKS.md).
        config.batch_size = 256
        config.log_every = 50
        config.ckpt_every = 1000
        config.eval.update(batch_size=256, probe_at_init=False)
        config.model.cnn.update(init_from="weights/resnet50_a1_in1k.safetensors", init_encoder="")
        config.model.vit.update(
            init_from="weights/vit_base_patch16_384.safetensors", init_encoder=""
        )
    return config
