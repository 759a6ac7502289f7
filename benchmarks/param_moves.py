"""How far training moved each part of a self-supervised network: ||θ_t − θ_0|| / ||θ_0|| per group.

    .venv/bin/python benchmarks/param_moves.py runs/sweep_dino/pretrain/seed_0 [more workdirs ...]

For each workdir (a SimCLR, DINO or CASS run) it re-creates the run's initial state from its
config and seed, then compares every checkpoint with it, by group: the encoder's kernels, the
encoder's 1-D parameters (BatchNorm scales and offsets), the head's kernels, the head's 1-D
parameters, and DINO's prototypes (`last_layer`). DINO's teacher is skipped (it is an EMA of the
student). Why it exists: an encoder whose kernels move 0.3% in a whole run has not been trained,
whatever its loss says (docs/self_supervised.md). Prints one block per checkpoint; writes nothing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os

import jax
import ml_collections
import numpy as np

from s4mi_jax.core import pretrained, run, sharding
from s4mi_jax.core.checkpoint import Checkpointer


def _key(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def groups(params) -> dict[str, np.ndarray]:
    """Flattened parameters by group; DINO's teacher left out."""
    out: dict[str, list[np.ndarray]] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = [_key(p) for p in path]
        if "teacher" in keys:
            continue
        part = next((k for k in keys if k in ("encoder", "head", "cnn", "vit")), keys[0])
        if "last_layer" in keys:
            kind = "prototypes"
        else:
            kind = "kernels" if np.ndim(leaf) > 1 else "1-D (norms, biases)"
        out.setdefault(f"{part} {kind}", []).append(np.asarray(leaf, np.float64).ravel())
    return {k: np.concatenate(v) for k, v in out.items()}


def moves(workdir: str) -> None:
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.mesh = dict(data=-1, fsdp=1)
    config.data.num_workers = 0
    mesh = sharding.make_mesh(config.mesh)
    trainer = importlib.import_module(f"s4mi_jax.trainers.{config.trainer}").TRAINER
    data = trainer.load_data(config)
    task = trainer.task(config, data, mesh)
    built = run.build(config, mesh, task, data)
    init = built.init()
    for s in task.starts:  # A pretrained start, if the run had one.
        init = pretrained.load_encoder(init, s.init_from, s.init_encoder, s.prefix)[0]
    before = groups(init.params)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    print(f"{workdir} ({config.trainer}, optimizer {config.optim.name})")
    for step in sorted(ckpt.manager.all_steps()):
        after = groups(ckpt.restore(built.abstract_state, None, step).params)
        print(f"  step {step}")
        for name in sorted(before):
            a, b = before[name], after[name]
            n0, dn = np.linalg.norm(a), np.linalg.norm(b - a)
            moved = f"moved {dn / n0:8.4f}" if n0 > 0 else f"||θ−θ0|| {dn:8.4f} (from zero)"
            print(f"    {name:32s} ||θ0|| {n0:8.3f}   {moved}")
    ckpt.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdirs", nargs="+")
    for workdir in ap.parse_args().workdirs:
        moves(workdir)


if __name__ == "__main__":
    main()
