"""The S4MI classification datasets (methods.md §2): what each paper config expects in `data.root`.

Every dataset is a folder in this package's layout (README "Use your own data"); the user's copy is
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

# The paper's classification seed (methods.md §4.1, §4.3: seed_everything(77)); also the split seed.
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
    """DEDL/CASS's training transform (methods.md §4.1) as near as our augmentations go.

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
    """timm's resnet50 / vit_base_patch16_384 shapes (methods.md §4.3)."""
    if name == "resnet50":
        return common.encoder_config("resnet50", width=64, image_size=image_size)
    return common.encoder_config("vit_base", patch_size=16, image_size=image_size)
