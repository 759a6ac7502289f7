"""Builds the embedded chest X-ray sample shipped inside the package (run once by the maintainers).

    python -m s4mi_jax.data.make_sample --src=/path/to/chest_xray_pneumonia

`--src` is a copy of the public "Chest X-Ray Images (Pneumonia)" dataset (Kermany et al., Cell 2018;
Mendeley Data doi:10.17632/rscbjbr9sj.2, CC BY 4.0) in this project's layout: images/, labels.csv
(0 NORMAL, 1 PNEUMONIA) and metadata.csv with patient_id, images 128x128 grayscale.

Why a fixed, balanced, one-image-per-patient subset: the default config must run on a fresh machine with no
data, finish in minutes on a CPU, and give a linear probe whose test split shares no patient with training.
Files are copied byte for byte (128x128 grayscale PNG from Kermany et al. 2018, CC BY 4.0).
"""

import csv
import shutil
from pathlib import Path

import numpy as np
from absl import app, flags

from s4mi_jax.data.sources import SAMPLE_ROOT

_SRC = flags.DEFINE_string(
    "src", None, "Folder of the full chest_xray_pneumonia dataset.", required=True
)
_PER_CLASS = flags.DEFINE_integer("per_class", 160, "Images per class (one per patient).")
_SEED = flags.DEFINE_integer("seed", 0, "Selection seed.")

ATTRIBUTION = """\
# Embedded sample: pediatric chest X-rays, NORMAL (0) vs PNEUMONIA (1)

{n} images ({per_class} per class, at most one image per patient, chosen with seed {seed} by
`python -m s4mi_jax.data.make_sample --src=<chest_xray_pneumonia folder>`), copied unchanged.

Source: Kermany D., Zhang K., Goldbaum M. (2018), "Labeled Optical Coherence Tomography (OCT) and Chest
X-Ray Images for Classification", Mendeley Data v2, doi:10.17632/rscbjbr9sj.2.
Paper: Kermany et al., "Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning",
Cell 172(5):1122-1131 (2018).
License: Creative Commons Attribution 4.0 International (CC BY 4.0),
https://creativecommons.org/licenses/by/4.0/ . Changes: images were resized to 224x224 RGB JPEG by a
third party (GitHub waliatushar/ai-pneumonia-detection), then converted to 8-bit grayscale and resized to
128x128 (Lanczos); this subset selects files and copies them without further change.

Layout: images/<name>.png (128x128, mode L), labels.csv (filename,label), metadata.csv
(filename,label,class_name,subtype,patient_id,original_split).
"""


def main(argv: list[str]) -> None:
    del argv
    src = Path(_SRC.value)
    rows = list(csv.DictReader(open(src / "metadata.csv", newline="")))
    rng = np.random.default_rng(_SEED.value)
    chosen = []
    for label in ("0", "1"):
        first_per_patient: dict[str, dict] = {}
        for row in sorted(rows, key=lambda r: r["filename"]):
            if row["label"] == label:
                first_per_patient.setdefault(row["patient_id"], row)
        patients = sorted(first_per_patient)
        pick = rng.choice(len(patients), size=_PER_CLASS.value, replace=False)
        chosen += [first_per_patient[patients[i]] for i in sorted(pick)]
    chosen.sort(key=lambda r: r["filename"])

    out = Path(SAMPLE_ROOT)
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    for row in chosen:
        shutil.copyfile(src / "images" / row["filename"], out / "images" / row["filename"])
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label"])
        w.writerows([r["filename"], r["label"]] for r in chosen)
    with open(out / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(chosen)
    (out / "ATTRIBUTION.md").write_text(
        ATTRIBUTION.format(n=len(chosen), per_class=_PER_CLASS.value, seed=_SEED.value)
    )
    print(f"wrote {len(chosen)} images to {out}")


if __name__ == "__main__":
    app.run(main)
