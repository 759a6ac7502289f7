"""Shared config pieces: `:variant,key=value` arguments and the defaults every trainer uses."""

from __future__ import annotations

import ml_collections

from s4mi_jax.data.sources import SEG_SAMPLE_ROOT


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """`"local"` or `"research,seed=3"` -> ConfigDict over `defaults` (big_vision's `parse_arg`).

    A bare word sets a boolean default to True; `key=value` sets a default of the same type. Unknown
    words are errors, so `:lcoal` fails instead of silently running the default.
    """
    cfg = ml_collections.ConfigDict(defaults)
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        default = defaults[key]
        if not value:
            value = True
        elif isinstance(default, bool):
            value = value.lower() in ("1", "true", "yes")
        elif default is not None:
            value = type(default)(value)
        cfg[key] = value
    return cfg


def aug_config(image_size: int) -> ml_collections.ConfigDict:
    """SimCLR view augmentation (Chen et al. 2020, appendix A), with colour strength 0.5 (its CIFAR
    setting; medical images)."""
    return ml_collections.ConfigDict(
        dict(
            image_size=image_size,
            crop_scale=(0.08, 1.0),
            hflip=True,
            jitter_prob=0.8,
            jitter_strength=0.5,
            grayscale_prob=0.2,  # RGB only.
            blur_prob=0.5,
            blur_sigma=(0.1, 2.0),
            solarize_prob=0.0,  # BYOL/DINO solarisation (pixels >= 0.5 inverted); off in SimCLR.
            mean=0.5,  # Per channel or one value for all; applied after scaling to [0, 1].
            std=0.25,
            # Views made inside the jitted step on the accelerator (data/device_augment.py); the host
            # then only decodes and resizes each image to a source_size square (None: 2 x image_size).
            on_device=False,
            source_size=ml_collections.config_dict.placeholder(int),
        )
    )


def encoder_config(name: str = "resnet18", **kw) -> ml_collections.ConfigDict:
    """Every encoder's fields, so `--config.model.name=vit_small` and friends work on any config.

    ResNets read width/stem; ViTs read patch_size/image_size (the position-embedding grid; other sizes
    are interpolated) and, for name="vit", embed_dim/depth/num_heads (presets vit_tiny/small/base fix
    them). drop_path is ViT stochastic depth. dtype: float32 | bfloat16 (params stay float32) | float64.
    """
    cfg = ml_collections.ConfigDict(
        dict(
            name=name,
            dtype="float32",
            width=16,
            stem="imagenet",
            patch_size=16,
            image_size=224,
            embed_dim=192,
            depth=12,
            num_heads=3,
            mlp_ratio=4.0,
            drop_path=0.0,
            remat=False,  # Activation checkpointing per block: less memory, ~1.3x compute.
        )
    )
    cfg.update(kw)
    return cfg


def optim_config(name: str, base_lr: float, **kw) -> ml_collections.ConfigDict:
    """`config.optim`: every optimizer's fields (s4mi_jax/core/optim.py says what each does)."""
    cfg = ml_collections.ConfigDict(
        dict(
            name=name,  # lars | sgd | adam (coupled L2, as torch Adam) | adamw
            base_lr=base_lr,
            lr_scaling="none",  # linear (x B/256) | sqrt (x sqrt(B)) | none
            weight_decay=0.0,
            weight_decay_end=ml_collections.config_dict.placeholder(float),  # cosine to it (DINO)
            momentum=0.9,
            nesterov=False,
            trust_coefficient=0.001,  # LARS
            schedule="warmup_cosine",  # or "periodic_cosine" (cosine_period_steps = torch's T_max)
            warmup_epochs=0.0,
            min_lr=0.0,
            cosine_period_steps=16,
            grad_clip_norm=0.0,  # 0: no clipping
            grad_clip_mode="global",  # or "per_param" (official DINO)
            never_zero_grad=False,  # Reproduce the released CASS loop's gradient accumulation.
        )
    )
    cfg.update(kw)
    return cfg


def pretrain_data_config() -> ml_collections.ConfigDict:
    """`config.data` of the self-supervised configs."""
    placeholder = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict(
        dict(
            root=placeholder(
                str
            ),  # Folder (images/ + labels.csv), .npz or .csv; None = embedded sample.
            # Or a TFDS dataset prepared by s4mi_jax/data/tfds_builders.py (instead of root).
            tfds_name=placeholder(str),
            tfds_data_dir=placeholder(str),
            tfds_split="train",
            eval_root=placeholder(str),  # Optional labeled folder for the probe's test split.
            channels=placeholder(int),  # None: as stored (1 for grayscale X-rays).
            verify=True,  # Check every file before training (fails early on a corrupt image).
            num_workers=0,  # Grain worker processes for augmentation (0: threads in this process).
            # With aug.on_device and num_workers=0: keep the decoded, resized images in memory when
            # all of them fit in this many MiB (decode once, not every epoch); 0 = never.
            keep_in_memory_mb=1024,
            # Patient-grouped, stratified val/test splits, as in the classification configs:
            # pretraining excludes both; the linear probe tests on `test`.
            split_seed=0,
            val_fraction=0.1,
            test_fraction=0.2,
            **label_options(),
        )
    )


def label_options() -> dict:
    """`config.data` keys on how labels are read (s4mi_jax/data/validate.py, docs/data.md)."""
    return dict(
        # Comma-separated class names in id order, e.g. "NORMAL,PNEUMONIA": labels must be among them
        # (names or ids), and classes without images are allowed. None: ids 0..K-1 or sorted names.
        class_names=ml_collections.config_dict.placeholder(str),
        # Run anyway when class names look like variants of each other, a class has < 2 patients or
        # a val/test split lacks a class (each is otherwise an error).
        accept_label_warnings=False,
    )


def run_config() -> ml_collections.ConfigDict:
    """Loop, checkpoint and mesh settings."""
    return ml_collections.ConfigDict(
        dict(
            seed=0,
            batch_size=64,  # Global batch (all devices, all hosts).
            total_epochs=10.0,
            total_steps=ml_collections.config_dict.placeholder(int),  # Overrides total_epochs.
            # Stop (with a checkpoint, as on preemption) after this step; rerun to continue.
            halt_at_step=ml_collections.config_dict.placeholder(int),
            # A non-finite loss/gradient never updates the parameters; then "stop" (at the next log,
            # naming the step) or "skip" (count it in train/skipped_steps and go on).
            nonfinite="stop",
            # Self-supervised runs: the collapse alarm (s4mi_jax/core/collapse.py) "warn"s once,
            # "stop"s the run, or is "off"; checked after this fraction of the run.
            collapse="warn",
            collapse_after=0.1,
            # Resume a workdir whose config.json differs (beyond log/checkpoint cadence) from this one.
            allow_config_change=False,
            # Resume although the data differ from those the run recorded (provenance fingerprint).
            allow_data_change=False,
            log_every=10,
            ckpt_every=100,
            keep_ckpts=2,
            # Async saves overlap training; a kill can then also lose the save in flight (up to two
            # intervals). Synchronous saves lose at most one interval and stall training while saving.
            checkpoint_async=True,
            # Device mesh (core/sharding.py): `data` x `fsdp` devices; data=-1 takes what fsdp leaves.
            # The batch is split over all devices. fsdp=1: parameters and optimizer state replicated
            # (pure data parallelism); fsdp=k: each state leaf of >= sharding.fsdp_min_size elements
            # is split k ways along its largest dimension k divides (for large models, e.g. ViTs).
            mesh=dict(data=-1, fsdp=1),
            sharding=dict(fsdp_min_size=2**16),
        )
    )


def classification_config(method: str, arg: str | None) -> ml_collections.ConfigDict:
    """Supervised / linear-probe / fine-tune classification on chest X-rays at a label fraction.

    Variants: `local` (tiny and fast: tests, the CPU sweep); `reference` (the S4MI/CASS fine-tuning
    recipe of DEDL's `Supervised.ipynb` and CASS.ipynb: sigmoid focal loss with min-max class
    weights, Adam 3e-4, periodic per-iteration cosine T_max=16 to 1e-6, batch 16);
    `label_fraction=0.1,seed=2` style arguments.
    """
    placeholder = ml_collections.config_dict.placeholder
    arg = parse_arg(arg, local=False, reference=False, label_fraction=1.0, seed=0)
    config = run_config()
    config.trainer = "classify"
    config.method = method  # supervised | linear_probe | finetune
    config.init_from = placeholder(
        str
    )  # Pretraining workdir (or checkpoints/<step>) to start from.
    # Which encoder of `init_from`: None = its only one (SimCLR) or DINO's teacher; CASS: "cnn/encoder"
    # or "vit/encoder" (then set config.model to that branch's architecture).
    config.init_encoder = placeholder(str)
    config.label_fraction = arg.label_fraction
    config.seed = arg.seed  # Picks the labeled subset and initialises the model.
    config.data = dict(
        root=placeholder(str),  # Folder, .npz or .csv of paths; None = embedded sample.
        tfds_name=placeholder(str),  # Or a prepared TFDS dataset (s4mi_jax/data/tfds_builders.py).
        tfds_data_dir=placeholder(str),
        tfds_split="train",
        eval_root=placeholder(str),  # A separate labeled test folder (else test is carved out).
        channels=placeholder(int),
        verify=True,
        num_workers=0,
        keep_in_memory_mb=1024,  # As the pretraining configs' (aug.on_device only).
        split_seed=0,  # Test/val split: the same for every fraction and seed.
        val_fraction=0.1,
        test_fraction=0.2,
        **label_options(),
    )
    config.aug = aug_config(image_size=64)
    config.aug.update(
        crop_scale=(0.5, 1.0),
        jitter_prob=0.3,
        jitter_strength=0.5,
        blur_prob=0.0,
        grayscale_prob=0.0,
    )
    config.model = encoder_config("resnet18", width=16)
    config.model.image_size = config.aug.get_ref("image_size")
    config.loss = dict(name="cross_entropy", class_weights="none")  # or focal / reference weights.
    config.optim = optim_config("adam", 1e-3, warmup_epochs=1.0)
    if method == "linear_probe":
        config.optim.update(name="sgd", base_lr=0.1, nesterov=True)  # SimCLR's linear evaluation.
    if method == "finetune":
        config.optim.base_lr = 3e-4
    config.batch_size = 64
    config.total_steps = 600  # Fixed steps at every fraction (epochs would starve the 1% cells).
    config.log_every = 50
    config.eval_every = 100  # Validation for model selection.
    config.select_metric = "auroc"
    config.ckpt_every = 200
    config.eval = dict(batch_size=128, bootstrap=1000)
    if arg.reference:
        config.loss.update(name="focal", class_weights="reference")
        config.optim.update(
            name="adam",
            base_lr=3e-4,
            weight_decay=0.0,
            schedule="periodic_cosine",
            cosine_period_steps=16,
            min_lr=1e-6,
        )
        config.batch_size = 16
    if arg.local:
        config.model.width = 8
        config.aug.image_size = 32
        config.batch_size = 32
        config.total_steps = 150
        config.log_every = 25
        config.eval_every = 50
        config.ckpt_every = 50
        config.eval.bootstrap = 200
    return config


def seg_model_config(name: str = "unet", **kw) -> ml_collections.ConfigDict:
    """A segmenter's fields (models/segmenter.py): "unet" (SSL4MIS U-Net, channels width·[1..16]),
    "swin_unet", or a ResNet name (U-Net decoder on that encoder; `init_from` loads its weights)."""
    cfg = encoder_config(name, width=16, stem="cifar", patch_size=4, embed_dim=96, drop_path=0.2)
    cfg.update(
        dict(
            levels=5,  # U-Net resolution levels (SSL4MIS: 5; fewer for small images or tests).
            dropout=(0.05, 0.1, 0.2, 0.3, 0.5),  # U-Net encoder dropout per level (SSL4MIS).
            depths=(2, 2, 2, 2),  # Swin-UNet "lite" Swin-T (S4MI).
            swin_heads=(3, 6, 12, 24),
            window_size=7,
        )
    )
    cfg.update(kw)
    return cfg


# config argument -> (data folder, channels, resize mode). Only the embedded sample ships with the
# package; the public datasets need `--config.data.root=` (a run without it stops with one line).
SEG_DATASETS = {
    "sample": (SEG_SAMPLE_ROOT, 3, "tile"),  # Embedded: 12 DSB2018 nuclei images (CC0). Default.
    "ph2": ("REQUIRED:--config.data.root=/path/to/ph2_dermoscopy", 3, "resize"),  # PH2 dermoscopy.
    "nuclei": ("REQUIRED:--config.data.root=/path/to/dsb2018_nuclei", 3, "tile"),  # DSB2018.
    "lung": ("REQUIRED:--config.data.root=/path/to/covid_cxr_lung_segmentation", 1, "resize"),
}


def segmentation_config(trainer: str, arg: str | None) -> ml_collections.ConfigDict:
    """Segmentation at a label fraction (trainers/segment.py, fixmatch_seg.py, cross_teaching.py).

    Data: the embedded 12-image nuclei sample by default (`sample`, tiled; runs with no data of your
    own); `ph2` (PH2 dermoscopy, resized), `nuclei` (the full DSB2018 stage-1 test set, tiled) and
    `lung` (COVID-19 chest X-ray lung masks, grayscale) set the channels and resize mode of those
    datasets and need `--config.data.root=/path/to/it`. Other arguments: `local` (tiny: tests,
    smoke runs; whole images resized unless a dataset argument is given), `reference` (S4MI's
    cross-teaching settings, from its `train_CT_between_cnn_transformer_2D.py`: 224×224, U-Net
    width 16 + Swin-T lite window 7, batch 8 labeled + 8 unlabeled, Adam 3.6e-4 with coupled L2
    1e-5, per-iteration periodic cosine T_max=50 to 5e-6, 10k iterations, ramp-up
    0.1·exp(−5(1−⌊t/150⌋/200)²), validation every 200), `label_fraction=0.5,seed=1`.
    """
    placeholder = ml_collections.config_dict.placeholder
    arg = parse_arg(
        arg,
        local=False,
        reference=False,
        sample=False,
        ph2=False,
        nuclei=False,
        lung=False,
        label_fraction=1.0,
        seed=0,
    )
    chosen = [d for d in ("ph2", "nuclei", "lung", "sample") if arg[d]]
    if len(chosen) > 1:
        raise ValueError(f"choose one dataset argument, not {chosen}")
    dataset = chosen[0] if chosen else "sample"
    root, channels, resize = SEG_DATASETS[dataset]
    if arg.local and not chosen:
        resize = (
            "resize"  # Tests and smoke runs on small folders: whole images (`:local,sample` tiles).
        )
    config = run_config()
    config.trainer = trainer
    config.label_fraction = arg.label_fraction
    config.seed = arg.seed
    config.init_from = placeholder(
        str
    )  # A pretraining run: its ResNet encoder -> the U-Net encoder.
    config.init_encoder = placeholder(str)
    config.data = dict(
        root=root,  # images/ + masks/ (+ labels.csv for stratification, metadata.csv patient_id).
        channels=channels,
        verify=True,
        num_workers=0,
        num_classes=2,
        resize=resize,  # "resize" the whole image, or "tile" it (variable-size microscopy).
        manifest=placeholder(str),  # Reuse a saved manifest.json (e.g. a classification run's).
        # A separate images/ + masks/ test folder: replaces the carved test split, nothing else.
        eval_root=placeholder(str),
        split_seed=0,
        val_fraction=0.1,
        test_fraction=0.2,
        **label_options(),
    )
    config.aug = dict(
        image_size=64,
        mean=0.5,
        std=0.25,
        max_angle=20,  # Paired rot90/flip or rotation in [-max_angle, max_angle) (SSL4MIS).
        # Strong view (FixMatch): UniMatch's ColorJitter(0.5, 0.5, 0.5, ~0.25) p=0.8, gray, blur.
        strong=dict(
            jitter_prob=0.8,
            jitter_strength=0.625,
            grayscale_prob=0.2,
            blur_prob=0.5,
            blur_sigma=(0.1, 2.0),
        ),
    )
    config.model = seg_model_config("unet")
    config.model.image_size = config.aug.get_ref("image_size")
    config.loss = dict(class_weights="median_frequency")  # or "none"
    config.app = dict(  # DEDL autoencoder post-processing (supervised only).
        enabled=False, expand=32, hidden=(256, 128, 64, 32, 16, 32, 64, 128, 256), lr=1e-3
    )
    config.fixmatch = dict(threshold=0.95, unlabeled_weight=1.0, cutmix_prob=0.5, ema_decay=0.0)
    config.cross_teaching = dict(consistency=0.1, rampup_length=200.0, rampup_divisor=150.0)
    if trainer == "cross_teaching":
        config.model = dict(
            cnn=seg_model_config("unet"),
            transformer=seg_model_config(
                "swin_unet", embed_dim=48, swin_heads=(3, 6, 12, 24), window_size=4
            ),
        )
        for branch in ("cnn", "transformer"):
            config.model[branch].image_size = config.aug.get_ref("image_size")
    config.optim = optim_config("adam", 1e-3, weight_decay=1e-5, min_lr=1e-5)
    config.batch_size = 8  # Labeled images per step (global).
    config.unlabeled_batch_size = 8  # Unlabeled images per step (FixMatch, cross teaching).
    config.total_steps = 1000
    config.log_every = 50
    config.eval_every = 200
    config.ckpt_every = 200
    config.select_metric = "iou"  # Mean per-image IoU on validation (S4MI).
    config.eval = dict(batch_size=16, overlays=4)
    if arg.reference:
        config.aug.image_size = 224
        if trainer == "cross_teaching":
            config.model.transformer.update(embed_dim=96, window_size=7)
        config.optim.update(
            base_lr=3.6e-4,
            weight_decay=1e-5,
            schedule="periodic_cosine",
            cosine_period_steps=50,
            min_lr=5e-6,
        )
        config.total_steps = 10000
        config.eval_every = 200
        config.ckpt_every = 1000
        config.eval.batch_size = 8
    if arg.local:  # Seconds on a CPU: tests and smoke runs.
        config.aug.image_size = 32
        small = dict(
            width=4, levels=3, embed_dim=8, depths=(2, 2), swin_heads=(1, 2), window_size=4
        )
        if trainer == "cross_teaching":
            config.model.cnn.update(small)
            config.model.transformer.update(small)
        else:
            config.model.update(small)
        config.total_steps = 4
        config.log_every = 2
        config.eval_every = 2
        config.ckpt_every = 2
        config.eval.update(batch_size=8, overlays=2)
    return config
