"""SimCLR pretraining on chest X-rays, then a linear probe of the frozen encoder.

    python -m s4mi_jax.main --config=configs/simclr_chest.py            # embedded sample, CPU, minutes
    python -m s4mi_jax.main --config=configs/simclr_chest.py:vit        # the same with CASS's small ViT
    python -m s4mi_jax.main --config=configs/simclr_chest.py:local      # tiny smoke run (tests, CI)
    python -m s4mi_jax.main --config=configs/simclr_chest.py:research \\
        --config.data.root=/data/chest_xray_pneumonia --workdir=/mnt/shared/runs/X  # ResNet-50, paper settings

Default: the embedded 320-image sample (CC BY 4.0, see s4mi_jax/data/sample/chest_xray/ATTRIBUTION.md), a
narrow ResNet-18 at 64x64, 200 epochs (600 steps, ~4 min on 2 CPU cores). `research`: ResNet-50, 224x224, batch 4096, LARS lr 0.3·B/256,
wd 1e-6, τ 0.1, 100 epochs with 10 warm-up epochs, bf16 compute (SimCLR paper, Chen et al. 2020).
`vit`: the 6-block ViT of configs/cass_chest.py (patch 8, width 192; `:local,vit` its `:local` size), so
its run can start CASS's ViT; SimCLR's paper trains no ViT, so the optimizer is MoCo v3's ViT recipe
(Chen et al. 2021, contrastive ViT training): AdamW 1.5e-4·B/256, weight decay 0.1.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, local=False, research=False, vit=False)
    config = common.run_config()
    config.trainer = "simclr"

    config.data = common.pretrain_data_config()
    config.aug = common.aug_config(image_size=64)
    config.model = common.encoder_config("resnet18", width=16)
    config.model.update(proj_hidden_dim=128, proj_out_dim=64, proj_layers=2)
    config.model.image_size = config.aug.get_ref("image_size")
    config.loss = dict(temperature=0.2)
    # base_lr x sqrt(batch): SimCLR's recommendation for small batches (paper App. B.1).
    config.optim = common.optim_config(
        "lars", 0.075, lr_scaling="sqrt", weight_decay=1e-6, warmup_epochs=5.0
    )
    config.batch_size = 64
    config.total_epochs = 200.0
    config.log_every = 10
    config.ckpt_every = 100
    config.eval = dict(
        linear_probe=True,
        # Also probe the random-init encoder (the baseline SimCLR must beat). It runs after training,
        # on the re-created initial state, so it never delays step 1 (trainers/pretrain.py).
        probe_at_init=True,
        batch_size=64,
        l2=1e-3,
    )

    if arg.local:  # Seconds on a CPU: for tests and CI.
        config.model.width = 8  # = the classification configs' :local encoder (init_from works).
        config.model.proj_hidden_dim = 16
        config.model.proj_out_dim = 8
        config.aug.image_size = 32
        config.batch_size = 16
        config.total_steps = 6
        config.log_every = 2
        config.ckpt_every = 3
        config.eval.batch_size = 32
        config.eval.probe_at_init = False
    if arg.vit:
        config.model.update(name="vit", patch_size=8, embed_dim=192, depth=6, num_heads=3)
        config.model.drop_path = 0.1
        config.optim.update(name="adamw", base_lr=1.5e-4, lr_scaling="linear", weight_decay=0.1)
        if arg.local:  # = configs/cass_chest.py:local's ViT.
            config.model.update(embed_dim=32, depth=2, num_heads=2)
    if arg.research:
        config.model.update(
            name="resnet50", width=64, dtype="bfloat16", proj_hidden_dim=2048, proj_out_dim=128
        )
        config.aug.image_size = 224
        config.aug.jitter_strength = 1.0
        config.data.num_workers = 8
        config.aug.on_device = True  # Host cores would be the bottleneck (BENCHMARKS.md).
        config.batch_size = 4096
        config.optim.update(base_lr=0.3, lr_scaling="linear")  # Paper: 0.3 x B/256 at B=4096.
        config.total_epochs = 100.0
        config.optim.warmup_epochs = 10.0
        config.loss.temperature = 0.1
        config.log_every = 50
        config.ckpt_every = 1000
        config.eval.batch_size = 1024
        config.eval.probe_at_init = False
    return config
