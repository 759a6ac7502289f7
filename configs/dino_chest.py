"""DINO pretraining on chest X-rays, then a linear probe of the frozen teacher (and student) encoder.

    python -m s4mi_jax.main --config=configs/dino_chest.py            # embedded sample, ResNet-18, CPU
    python -m s4mi_jax.main --config=configs/dino_chest.py:vit        # the same with a small ViT
    python -m s4mi_jax.main --config=configs/dino_chest.py:local      # tiny smoke run (tests, CI)
    python -m s4mi_jax.main --config=configs/dino_chest.py:research \\
        --config.data.root=/data/chest_xray_pneumonia --workdir=/mnt/shared/runs/X  # ViT-S/16, official recipe

Method and defaults: methods.md §4.2 and official `main_dino.py` (trainers/dino.py says where we
differ). Default: a width-16 ResNet-18 (the SimCLR default's backbone, so the label-fraction sweep can
fine-tune it as is) at 64x64 with 2 global (64 px) + 6 local (32 px) crops. `vit`: a 6-block ViT
(patch 8, width 192, 3 heads). `research`: ViT-S/16, 2x224 + 8x96 crops, batch 1024, 100 epochs,
AdamW 5e-4·B/256 with 10 warm-up epochs, wd 0.04 -> 0.4, K=65536, drop-path 0.1, bf16 compute.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, local=False, vit=False, research=False)
    config = common.run_config()
    config.trainer = "dino"
    config.data = common.pretrain_data_config()

    config.aug = common.aug_config(image_size=64)
    config.aug.update(
        num_global_crops=2,
        global_crop_scale=(0.4, 1.0),
        num_local_crops=6,
        local_image_size=32,
        local_crop_scale=(0.05, 0.4),
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
    )
    config.loss = dict(
        student_temp=0.1,
        teacher_temp=0.04,
        warmup_teacher_temp=0.04,
        teacher_temp_warmup_epochs=0.0,
        teacher_momentum=0.996,  # Cosine to 1 over the run.
        center_momentum=0.9,
    )
    config.optim = common.optim_config(
        "adamw",
        5e-4,
        lr_scaling="linear",
        weight_decay=0.04,
        weight_decay_end=0.4,
        warmup_epochs=10.0,
        min_lr=1e-6,
        grad_clip_norm=3.0,
        grad_clip_mode="per_param",
    )
    config.optim.freeze_last_layer_epochs = 1.0
    config.batch_size = 64
    config.total_epochs = 100.0
    config.log_every = 10
    config.ckpt_every = 100
    config.eval = dict(linear_probe=True, probe_at_init=True, batch_size=64, l2=1e-3)

    if arg.vit or arg.research:
        config.model.update(
            name="vit", patch_size=8, embed_dim=192, depth=6, num_heads=3, drop_path=0.1
        )
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
