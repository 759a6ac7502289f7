"""The S4MI classification datasets : what each paper config expects in `data.root`.

Every dataset is a folder in this package's layout (docs/data.md); the user's copy is
given by one override, `--config.data.root=/path/to/folder`:

    ROOT/images/<file>.jpg|png|tif     every image (any size: resized to `aug.image_size`)
    ROOT/labels.csv                    labels (below); images not listed are unlabeled (used by SSL only)
    ROOT/metadata.csv                  optional `filename,patient_id`: a patient's (lesion's) images stay
                                       on one side of every split

Splits are carved from ROOT (`data.val_fraction` 0.1, `data.test_fraction` 0.2: the 70/10/20 of the
CASS README), patient-grouped and stratified, the same for pretraining and every label fraction.
A separate labeled test folder can replace the carved test split: `--config.data.eval_root=DIR`.
"""

from __future__ import annotations

import ml_collections

from configs import common

# name -> (number of classes, multi-label, the labels.csv it expects)
DATASETS = {
    # ISIC-2017 Part 3 (Codella et al. 2018): 2000 train / 150 val / 600 test dermoscopy JPEGs. Put all
    # of them in ROOT/images (or only train+val, with the official test as data.eval_root);
    # labels.csv: `filename,label`, label in {nevus, melanoma, seborrheic_keratosis} (names or ids
    # 0/1/2 in that order). `python -m s4mi_jax.data.tfds_builders --dataset=isic2017` reads the
    # release layout instead (then --config.data.tfds_name=isic2017, not data.root).
    "isic2017": (3, False, "filename,label with nevus | melanoma | seborrheic_keratosis"),
    # Dermofit Image Library (licensed): 1,300 clinical images in 10 classes. labels.csv
    # `filename,label` with the class folder name (AK BCC DF IEC MEL ML PYO SCC SK VASC);
    # metadata.csv `patient_id` = the lesion id. (The TFDS builder `dermofit` reads the release's
    # <CLASS>/<lesion>/<lesion>.png layout.)
    "dermofit": (
        10,
        False,
        "filename,label with AK | BCC | DF | IEC | MEL | ML | PYO | SCC | SK | VASC",
    ),
    # Dermatomyositis-style multi-label (Van Buren et al. 2022; private): autofluorescence slides,
    # 352x469 RGB. labels.csv has one 0/1 column per class, no `label` column:
    # `filename,b,tfh,tfh217,tfhl,other` (the DEDL config's classes); metadata.csv `patient_id`
    # (e.g. Myo089) keeps a patient's slides together.
    "dermatomyositis": (5, True, "filename,b,tfh,tfh217,tfhl,other with 0/1 entries"),
}

# The paper's classification seed (DEDL and CASS.ipynb: seed_everything(77)); also the split seed.
PAPER_SEED = 77


def args(arg: str | None) -> ml_collections.ConfigDict:
    """The arguments every paper config takes (one `--variant` serves a whole launch/sweep.py run):
    dataset, backbone (resnet50 | vit_base), pretrain (cass | dino | imagenet), label_fraction, seed."""
    arg = common.parse_arg(
        arg,
        dataset="isic2017",
        backbone="resnet50",
        pretrain="cass",
        label_fraction=1.0,
        seed=PAPER_SEED,
    )
    if arg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {arg.dataset!r}; known: {sorted(DATASETS)}")
    if arg.backbone not in ("resnet50", "vit_base"):
        raise ValueError(f"unknown backbone {arg.backbone!r}; known: resnet50, vit_base")
    if arg.pretrain not in ("cass", "dino", "imagenet"):
        raise ValueError(f"unknown pretrain {arg.pretrain!r}; known: cass, dino, imagenet")
    return arg


def data_config(dataset: str, *, pretraining: bool) -> ml_collections.ConfigDict:
    """`config.data` for `dataset`. `root` holds a path that cannot exist until `--config.data.root=`
    replaces it (the usual None would silently train on the embedded chest X-ray sample); a TFDS
    dataset instead: `--config.data.tfds_name=isic2017 --config.data.root=` (empty)."""
    data = common.pretrain_data_config()
    data.update(
        root=f"REQUIRED:--config.data.root=/path/to/{dataset}",
        channels=3,
        split_seed=PAPER_SEED,
        val_fraction=0.1,
        test_fraction=0.2,
    )
    if not pretraining:  # Checked against labels.csv by trainers/classify.py.
        num_classes, multilabel, _ = DATASETS[dataset]
        data.num_classes = num_classes
        data.multilabel = multilabel
    return data


def pretrain_config(trainer: str, arg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """What CASS and DINO pretraining share: data, augmentation, batch 16, 100 epochs (CASS's
    comparison), the seed, cadence and the closing linear probe."""
    config = common.run_config()
    config.trainer = trainer
    config.seed = arg.seed
    config.data = data_config(arg.dataset, pretraining=True)
    config.aug = paper_aug(384)
    config.batch_size = 16
    config.total_epochs = 100.0
    config.log_every = 50
    config.ckpt_every = 500
    # The closing linear probe is multinomial: off for multi-label data.
    multilabel = DATASETS[arg.dataset][1]
    config.eval = dict(linear_probe=not multilabel, probe_at_init=False, batch_size=64, l2=1e-3)
    return config


def paper_aug(image_size: int = 384) -> ml_collections.ConfigDict:
    """DEDL/CASS's training transform (`Supervised.ipynb`) as near as our augmentations go.

    Paper/reference: Resize(384) then, each with p=0.3, ColorJitter(0.2,0.2,0.2)+RandomPerspective(0.2),
    ColorJitter+RandomAffine(10 deg), vertical flip, horizontal flip; ImageNet mean/std. Here: random
    resized crop (scale 0.5-1, a geometric jitter in place of perspective/affine), horizontal flip
    p=0.5, colour jitter p=0.3 (strength 0.25 = 0.2 brightness/contrast/saturation), no blur, no
    vertical flip, ImageNet mean/std. Evaluation: whole-image resize + normalise, as the paper.
    """
    aug = common.aug_config(image_size).to_dict()
    aug.update(
        crop_scale=(0.5, 1.0),
        jitter_prob=0.3,
        jitter_strength=0.25,
        grayscale_prob=0.0,
        blur_prob=0.0,
        mean=(0.485, 0.456, 0.406),  # Per channel (common.aug_config's are one float for all).
        std=(0.229, 0.224, 0.225),
    )
    return ml_collections.ConfigDict(aug)


def backbone_config(name: str, image_size: int) -> ml_collections.ConfigDict:
    """timm's resnet50 / vit_base_patch16_384 shapes (the networks CASS.ipynb builds)."""
    if name == "resnet50":
        return common.encoder_config("resnet50", width=64, image_size=image_size)
    return common.encoder_config("vit_base", patch_size=16, image_size=image_size)


# ---- Segmentation (DEDL APP notebook, S4MI cross teaching) ----------------------------------------
#
# Every dataset is a folder (docs/data.md, data/segmentation.py), given by one override,
# `--config.data.root=/path/to/folder`:
#
#     ROOT/images/<stem>.jpg|png|tif   every image (any size; brought to aug.image_size = 224)
#     ROOT/masks/<stem>.png            its mask, same stem: 0/255 (binary lesion / cell masks)
#     ROOT/labels.csv, metadata.csv    optional: `filename,label` (stratifies the splits, e.g. the
#                                      diagnosis), `filename,patient_id` (keeps a patient together)
#
# An image without a mask is unlabeled (cross teaching uses it; nothing invents a mask). Splits are
# carved from ROOT (val 10%, test 20%: S4MI's 70/10/20 for Dermofit and Dermatomyositis), patient-
# grouped, the same for every label fraction, seed and method; the label fractions are nested.

# name -> (input channels, data.resize, what ROOT holds)
SEG_DATASETS = {
    # ISIC-2017 Part 1: dermoscopy JPEGs + `ISIC_xxxxxxx_segmentation.png` masks: rename a mask to
    # the image's stem (`ISIC_xxxxxxx.png`). S4MI uses the official 2000/150/600 split; ours is carved
    # from ROOT unless `--config.data.manifest=` gives a manifest.json with the official split.
    "isic2017": (3, "resize", "images/ISIC_*.jpg + masks/ISIC_*.png"),
    # Dermofit: <CLASS>/<lesion>/<lesion>.png + <lesion>mask.png: flatten to images/<lesion>.png and
    # masks/<lesion>.png; labels.csv with the class (stratifies, as S4MI's per-class 70/10/20).
    # S4MI's "Rnorm" (R channel -> R/|RGB|) is not applied here: images are only scaled to [0, 1].
    "dermofit": (3, "resize", "images/<lesion>.png + masks/<lesion>.png (+ labels.csv class)"),
    # Dermatomyositis (private): DAPI channel (1 channel), binary cell masks, 1408x1876;
    # metadata.csv `patient_id` (Myo089, ...). "Interpolated": the whole slide resized to 224.
    "dermatomyositis": (1, "resize", "images/<slide>.tif (DAPI) + masks/<slide>.png"),
    # The "tiled" variant: S4MI cuts 480x480 tiles and zooms each to 224; here 224x224 tiles at the
    # native resolution (data.resize="tile", last tile aligned to the edge), so a tile covers less.
    "dermatomyositis_tiled": (1, "tile", "as dermatomyositis"),
}

# S4MI's semi-supervised label fractions (read_output.py: 10p, 30p, 50p, 70p, 99p) and seeds (73, 211, 1234:
# the cross-teaching runs averaged over three seeds).
SEG_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.99)
SEG_SEEDS = (73, 211, 1234)


def seg_args(arg: str | None, **extra) -> ml_collections.ConfigDict:
    """The arguments of the segmentation paper configs: dataset, label_fraction, seed (+ `extra`)."""
    arg = common.parse_arg(arg, dataset="isic2017", label_fraction=0.5, seed=SEG_SEEDS[-1], **extra)
    if arg.dataset not in SEG_DATASETS:
        raise ValueError(f"unknown dataset {arg.dataset!r}; known: {sorted(SEG_DATASETS)}")
    return arg


def seg_config(trainer: str, arg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """common.segmentation_config(trainer, "reference") (S4MI's cross-teaching settings: 224 px,
    U-Net width 16, Swin-T lite, batch 8 + 8, Adam 3.6e-4 + L2 1e-5, periodic cosine T_max 50 to
    5e-6, 10k iterations, validation every 200 on mean IoU) with the dataset's data section."""
    config = common.segmentation_config(
        trainer, f"reference,label_fraction={arg.label_fraction},seed={arg.seed}"
    )
    channels, resize, _ = SEG_DATASETS[arg.dataset]
    config.data.update(
        root=f"REQUIRED:--config.data.root=/path/to/{arg.dataset}",
        channels=channels,
        resize=resize,
        split_seed=0,  # Fixed: the same val/test for every fraction, seed and method.
        val_fraction=0.1,
        test_fraction=0.2,
    )
    config.ckpt_every = 1000  # S4MI saves every 3000 iterations; more often here (preemption).
    return config
