"""DINO pretraining on chest X-rays, then a linear probe of the frozen teacher (and student) encoder.

    python -m s4mi_jax.main --config=configs/dino_chest.py            # embedded sample, ResNet-18, CPU
    python -m s4mi_jax.main --config=configs/dino_chest.py:vit        # the same with a small ViT
    python -m s4mi_jax.main --config=configs/dino_chest.py:s4mi       # S4MI's own DINO settings
    python -m s4mi_jax.main --config=configs/dino_chest.py:local      # tiny smoke run (tests, CI)
    python -m s4mi_jax.main --config=configs/dino_chest.py:sgd        # official ResNet-50 SGD recipe
    python -m s4mi_jax.main --config=configs/dino_chest.py:research \\
        --config.data.root=/data/chest_xray_pneumonia --workdir=/mnt/shared/runs/X  # ViT-S/16, official recipe

Expected: the teacher's linear probe beats the random-init probe of the same network. On the chest
X-rays at `:local` (docs/self_supervised.md, three seeds, 1000 steps) the closing probe's AUROC is
0.895 ± 0.026 against 0.801 at random init; the collapse alarm warns near step 200 (the head's output goes
nearly uniform while the encoder keeps learning; the docs say what was measured).
The default command (embedded sample, 300 steps, about 6 minutes on 2 cores) ended, on 2026-12-01,
with a teacher probe AUROC of 0.935 (accuracy 0.891) against 0.898 (0.781) at random init. That is on
64 test images, so one image is 1.6 points of accuracy. The alarm warned at step 210 (entropy ratio 0.90).

Sources, per architecture (official DINO, Caron et al. 2021, `main_dino.py` and its README):
- Narrow ResNets (default, `:local`): the official ResNet-50 recipe's augmentation and schedule (global
  crops (0.14, 1), local crops (0.05, 0.14), 10 warm-up epochs and a cosine to 1e-6, per-parameter
  clipping at 3, last layer frozen for one epoch, teacher momentum 0.996 -> 1, temperatures 0.1 and
  0.04), but LARS as this project's SimCLR trains the same encoder (0.075·sqrt(B), trust 0.001, weight
  decay 1e-6; solo-learn's ResNet-18 DINO also uses LARS) and BatchNorm in the head (official
  `--use_bn_in_head`). Why: with the official SGD the encoder is never trained at these widths. The
  loss reaches it through a head whose bottleneck norm is 0.19 (`:local`) instead of 1.63, so its
  gradients are small, and an SGD step is proportional to them: over 1000 steps its kernels moved
  0.5% of their norm and its probe equalled random init's. LARS scales each layer's step to the
  layer's own weight norm: the kernels moved 12%, as in SimCLR
  (`python benchmarks/param_moves.py <workdir>`).
- `:sgd`: the official ResNet-50 recipe itself (SGD, momentum 0.9, 0.03·B/256, weight decay 1e-4, no
  BatchNorm in the head), its learning rate re-derived for width. The loss reaches the head's MLP through
  the bottleneck's L2-normalisation, whose gradient scales as 1/||b||, so an SGD step relative to ||b||
  scales as lr/||b||²; at init on chest X-rays ||b|| is 1.63 for the official ResNet-50 head, 0.42 for
  the default and 0.19 for `:local` (`python benchmarks/dino_head_scale.py`): 0.03·(||b||/1.63)² gives
  0.002 and 4e-4. Its teacher stays sharper than the default's, but its encoder does not learn (above).
- ViT backbones (`:vit`, `:research`): the official ViT-S/16 recipe: AdamW 5e-4·B/256 with 10 warm-up
  epochs, weight decay 0.04 -> 0.4 (cosine), global crops (0.4, 1), local (0.05, 0.4), drop-path 0.1.
  `:research`: ViT-S/16, 2x224 + 8x96 crops, batch 1024, 100 epochs, K=65536, bf16 compute.
- `:s4mi` (ViT): S4MI's DINO ran lucidrains' `vit-pytorch` `Dino` wrapper with its defaults, taken
  here where this trainer can express them: student temperature 0.9, teacher temperature 0.04, teacher
  EMA 0.9 constant, centre EMA 0.9, 2 global crops (0.5, 1) and 2 local crops (0.05, 0.4) at the same
  size, 4-layer head of width 256, Adam 3e-4. Differences: the student also sees the global crops
  (lucidrains': locals only) and the head keeps DINO's L2-normalised bottleneck and weight-normalised
  last layer.
Head widths below the official ones are a new model: the head's init keeps the official per-unit
signal gain at any width (`models/dino.py`), without which a narrow head collapses within 100 steps.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, local=False, vit=False, research=False, s4mi=False, sgd=False)
    config = common.run_config()
    config.trainer = "dino"
    config.data = common.pretrain_data_config()

    config.aug = common.aug_config(image_size=64)
    config.aug.update(
        num_global_crops=2,
        global_crop_scale=(0.14, 1.0),  # Official ResNet-50 recipe.
        num_local_crops=6,
        local_image_size=32,
        local_crop_scale=(0.05, 0.14),
        # Official per-crop blur probabilities (global 1, global 2; locals).
        global_blur_prob=(1.0, 0.1),
        local_blur_prob=0.5,
    )
    config.model = common.encoder_config("resnet18", width=16)
    config.model.image_size = config.aug.get_ref("image_size")
    config.model.update(
        head_out_dim=4096,  # K: official 65536 for ImageNet; a few thousand suffices for 2 classes.
        head_hidden_dim=512,
        head_bottleneck_dim=128,
        head_layers=3,
        norm_last_layer=True,  # Weight-normalised last layer with g fixed at 1 (official default).
        head_init="fan_in",  # MLP std keeps the official per-unit gain at any width; "fixed": 0.02.
        head_use_bn=True,  # Official `--use_bn_in_head` (off by default there; docstring: why on).
    )
    config.loss = dict(
        student_temp=0.1,
        teacher_temp=0.04,
        warmup_teacher_temp=0.04,
        teacher_temp_warmup_epochs=0.0,
        teacher_momentum=0.996,
        teacher_momentum_schedule="cosine",  # to 1 over the run (official); or "constant"
        center_momentum=0.9,
    )
    # Narrow ResNets (this config's widths): LARS as this project's SimCLR trains the same encoder
    # (0.075·sqrt(B), trust 0.001, wd 1e-6; solo-learn's ResNet-18 DINO uses LARS too), plus DINO's
    # per-parameter clipping. Official DINO's SGD recipe for ResNet-50 is `:sgd` (docstring: why).
    config.optim = common.optim_config(
        "lars",
        0.075,
        lr_scaling="sqrt",
        weight_decay=1e-6,
        warmup_epochs=10.0,
        min_lr=1e-6,
        grad_clip_norm=3.0,
        grad_clip_mode="per_param",
    )
    config.optim.freeze_last_layer_epochs = 1.0
    config.batch_size = 64
    # A pretrained start for the student and the teacher encoder alike (a workdir, checkpoint or
    # weights file); unset: random initialisation, as official DINO.
    config.init_from = ml_collections.config_dict.placeholder(str)
    config.init_encoder = ml_collections.config_dict.placeholder(str)
    config.total_epochs = 100.0
    config.log_every = 10
    config.ckpt_every = 100
    config.eval = dict(linear_probe=True, probe_at_init=True, batch_size=64, l2=1e-3)

    if arg.vit or arg.research or arg.s4mi:
        config.model.update(
            name="vit", patch_size=8, embed_dim=192, depth=6, num_heads=3, drop_path=0.1
        )
        # Official ViT recipe: AdamW 5e-4·B/256, wd 0.04 -> 0.4, crops (0.4, 1) and (0.05, 0.4).
        config.optim.update(name="adamw", base_lr=5e-4, lr_scaling="linear")
        config.optim.update(weight_decay=0.04, weight_decay_end=0.4)
        config.model.head_use_bn = False  # Official ViT head: no BatchNorm.
        config.aug.update(global_crop_scale=(0.4, 1.0), local_crop_scale=(0.05, 0.4))
    if arg.s4mi:  # lucidrains vit-pytorch `Dino` defaults (S4MI's DINO).
        config.model.update(head_out_dim=65336, head_hidden_dim=256, head_bottleneck_dim=256)
        config.model.head_layers = 4
        config.aug.update(
            global_crop_scale=(0.5, 1.0),
            num_local_crops=2,
            local_crop_scale=(0.05, 0.4),
            local_image_size=config.aug.get_ref("image_size"),
        )
        config.loss.update(student_temp=0.9, teacher_momentum=0.9)
        config.loss.teacher_momentum_schedule = "constant"
        config.optim = common.optim_config("adam", 3e-4)
        config.optim.freeze_last_layer_epochs = 1.0
    if arg.sgd:  # Official DINO README's ResNet-50 recipe, the learning rate re-derived for width.
        config.model.head_use_bn = False
        config.optim.update(name="sgd", lr_scaling="linear", weight_decay=1e-4)
        config.optim.base_lr = 4e-4 if arg.local else 0.002  # 0.03·(||b|| / 1.63)² (docstring).
    if arg.local:  # Seconds on a CPU: for tests and CI.
        config.model.update(
            width=8, embed_dim=32, depth=2, num_heads=2, head_out_dim=64, head_hidden_dim=32
        )
        config.model.head_bottleneck_dim = 16
        config.aug.update(image_size=32, local_image_size=16, num_local_crops=2)
        config.batch_size = 16
        config.total_steps = 6
        config.optim.warmup_epochs = 1.0
        config.log_every = 2
        config.ckpt_every = 3
        config.eval.update(batch_size=32, probe_at_init=False)
    if arg.research:
        config.model.update(name="vit_small", patch_size=16, dtype="bfloat16", head_out_dim=65536)
        config.model.update(head_hidden_dim=2048, head_bottleneck_dim=256)
        config.aug.update(
            image_size=224, local_image_size=96, num_local_crops=8, jitter_strength=1.0
        )
        config.data.num_workers = 8
        config.aug.on_device = True  # Host cores would be the bottleneck (BENCHMARKS.md).
        config.batch_size = 1024
        config.total_epochs = 100.0
        config.log_every = 50
        config.ckpt_every = 1000
        config.eval.update(batch_size=1024, probe_at_init=False)
    return config
