"""Export a trained encoder: `python -m s4mi_jax.export_weights --init_from=RUN --out=FILE.safetensors`.

`--init_from` is a workdir (its latest checkpoint), its `checkpoints/` folder or one `checkpoints/<step>`;
`--init_encoder` picks the encoder of a run that has several (CASS: `cnn/encoder` / `vit/encoder`; DINO
defaults to its teacher). `--layout=s4mi` (default) writes this package's schema (models/weights.py), which
`config.init_from=FILE` loads back bit for bit; `--layout=torchvision` (ResNets) or `--layout=timm` (ViTs)
writes those libraries' state_dict names and layouts (no classifier head; the mapping is the inverse of
the import one, which is tested against a NumPy forward pass). Also `.npz`.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from s4mi_jax.core import pretrained
from s4mi_jax.errors import S4MIError
from s4mi_jax.models import weights

_INIT_FROM = flags.DEFINE_string("init_from", None, "Run folder or checkpoint to export from.")
_INIT_ENCODER = flags.DEFINE_string("init_encoder", None, "Encoder of the checkpoint to export.")
_OUT = flags.DEFINE_string("out", None, "Output file: .safetensors or .npz.")
_LAYOUT = flags.DEFINE_enum("layout", "s4mi", list(weights.LAYOUTS), "Tensor names and layouts.")


def _model_config(checkpoint_dir: str) -> dict | None:
    """`config.model` of the run that wrote the checkpoint (its workdir's config.json), if found."""
    for folder in (checkpoint_dir, os.path.dirname(checkpoint_dir)):
        path = os.path.join(folder, "config.json")
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f).get("model")
    return None


def export(
    init_from: str, out: str, *, init_encoder: str | None = None, layout: str = "s4mi"
) -> tuple[str, int, dict]:
    """(encoder name, step, tensors written)."""
    name, step, tree = pretrained.read_encoder(init_from, init_encoder)
    directory, _ = pretrained.resolve(init_from)
    flat = weights.flatten(tree)
    tensors = weights.export_encoder(
        flat,
        out,
        layout=layout,
        model=_model_config(directory),
        source=f"{os.path.abspath(init_from)}:{name}@{step}",
    )
    return name, step, tensors


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _INIT_FROM.value or not _OUT.value:
        raise app.UsageError("--init_from and --out are required")
    try:
        name, step, tensors = export(
            _INIT_FROM.value, _OUT.value, init_encoder=_INIT_ENCODER.value, layout=_LAYOUT.value
        )
    except S4MIError as e:
        print(f"export_weights: error: {e}", file=sys.stderr)
        sys.exit(2)
    count = sum(v.size for v in tensors.values())
    print(
        f"export_weights: {name} at step {step}: {len(tensors)} tensors, {count:,} values "
        f"({_LAYOUT.value} layout) -> {_OUT.value}"
    )


if __name__ == "__main__":
    app.run(main)
