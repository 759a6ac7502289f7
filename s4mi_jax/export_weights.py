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

from s4mi_jax import interrupt

if __name__ == "__main__":  # Ctrl-C while JAX imports: one line.
    interrupt.quiet_until_started("export_weights")

from absl import app, flags  # noqa: E402

from s4mi_jax import outputs  # noqa: E402
from s4mi_jax.core import pretrained  # noqa: E402
from s4mi_jax.errors import ConfigError, S4MIError  # noqa: E402
from s4mi_jax.models import weights  # noqa: E402

_INIT_FROM = flags.DEFINE_string("init_from", None, "Run folder or checkpoint to export from.")
_INIT_ENCODER = flags.DEFINE_string("init_encoder", None, "Encoder of the checkpoint to export.")
_OUT = flags.DEFINE_string("out", None, "Output file: .safetensors or .npz.")
_LAYOUT = flags.DEFINE_enum("layout", "s4mi", list(weights.LAYOUTS), "Tensor names and layouts.")


def _run_config(checkpoint_dir: str) -> dict:
    """The config.json of the run that wrote the checkpoint (its workdir's), or {} if none."""
    for folder in (checkpoint_dir, os.path.dirname(checkpoint_dir)):
        path = os.path.join(folder, "config.json")
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    config = json.load(f)
            except (OSError, ValueError) as e:
                raise ConfigError(
                    f"cannot read {path}: {e}; the run's config record is damaged."
                ) from None
            return config if isinstance(config, dict) else {}
    return {}


def export(
    init_from: str, out: str, *, init_encoder: str | None = None, layout: str = "s4mi"
) -> tuple[str, int, dict]:
    """(encoder name, step, tensors written). `out` is checked before anything is read: never over
    the checkpoint, never into the run's data."""
    directory, _ = pretrained.resolve(init_from, "--init_from")
    config = _run_config(directory)
    roots = outputs.config_data_roots(_Dict(config)) if config else {}
    outputs.check_output(out, "--out", {**roots, "--init_from": init_from})
    name, step, tree = pretrained.read_encoder(
        init_from, init_encoder, flags=("--init_from", "--init_encoder")
    )
    flat = weights.flatten(tree)
    try:
        tensors = weights.export_encoder(
            flat,
            out,
            layout=layout,
            model=config.get("model"),
            source=f"{os.path.abspath(init_from)}:{name}@{step}",
        )
    except OSError as e:
        raise ConfigError(f"--out={out}: cannot write it: {e}. Nothing was written.") from None
    return name, step, tensors


class _Dict(dict):
    """A config.json dict read like a ConfigDict by `outputs.config_data_roots`."""

    def get(self, key, default=None):
        value = super().get(key, default)
        return _Dict(value) if isinstance(value, dict) else value


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _INIT_FROM.value or not _OUT.value:
        raise app.UsageError("--init_from and --out are required")
    interrupt.started()
    try:
        name, step, tensors = export(
            _INIT_FROM.value, _OUT.value, init_encoder=_INIT_ENCODER.value, layout=_LAYOUT.value
        )
    except S4MIError as e:
        print(f"export_weights: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # The file is written atomically: none, or a whole one.
        print(f"export_weights: interrupted; {_OUT.value} was not written.", file=sys.stderr)
        sys.exit(interrupt.EXIT_INTERRUPTED)
    count = sum(v.size for v in tensors.values())
    print(
        f"export_weights: {name} at step {step}: {len(tensors)} tensors, {count:,} values "
        f"({_LAYOUT.value} layout) -> {_OUT.value}"
    )


if __name__ == "__main__":
    app.run(main)
