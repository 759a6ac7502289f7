"""Why a DINO run's teacher drifts towards uniform: cross-view readings of a finished run's checkpoints.

    .venv/bin/python benchmarks/dino_drift.py --workdir=runs/sweep_dino/pretrain/seed_0

For the state at init and each checkpoint of `--workdir` (a `configs/dino_chest.py` run), on
`--batches` training batches made exactly as the run makes them (train-mode BatchNorm, as in the step):
- `agree`: how often the teacher's most likely prototype is the same for the two global crops of one
  image, against `chance` (the same for two crops of different images);
- `ce_pair` / `ce_marg`: cross-entropy of the teacher's distribution on crop 2 predicted by its
  distribution on crop 1 of the same image, and by the batch's mean distribution: when the two are
  equal, the other crop of an image says nothing the batch mean does not, so the student's best
  answer is the mean, and the teacher (its EMA) follows it towards the centre;
- `enc_pos` / `enc_neg`: mean cosine of the encoder's features between the two crops of one image and
  between crops of different images (how much of an image the encoder keeps across crops);
- `spread`, `rank`: the collapse monitors of the student's bottleneck (core/collapse.py).
Prints one row per state; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from s4mi_jax.core import collapse, pretrained, run, sharding, train_state
from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.trainers import dino, pretrain


def readings(graphdef, state, batches, config) -> dict[str, float]:
    @jax.jit
    def forward(params, model_state, xg):
        model = nnx.merge(graphdef, params, train_state.fresh(model_state))
        model.train()
        n, g = xg.shape[:2]
        x = jnp.swapaxes(xg, 0, 1).reshape(n * g, *xg.shape[2:])  # Crops first, as the step.
        _, t = model.teacher(x)
        feats = model.student.encoder(x)
        b = model.student.head.bottleneck(feats)
        p = jax.nn.softmax((t - model.center[...]) / config.loss.teacher_temp, -1)
        return p.reshape(g, n, -1), feats.reshape(g, n, -1), collapse.embedding_monitors(b)

    out = []
    for batch in batches:
        p, f, mon = forward(state.params, state.model_state, jnp.asarray(batch["global"]))
        p, f = np.asarray(p, np.float64), np.asarray(f, np.float64)
        a0, a1 = p[0].argmax(-1), p[1].argmax(-1)
        marg = p[0].mean(0)
        f = f / np.linalg.norm(f, axis=-1, keepdims=True)
        cos = f[0] @ f[1].T
        n = len(cos)
        out.append(
            {
                "agree": float(np.mean(a0 == a1)),
                "chance": float(np.mean(a0[:, None] == a1[None, :])),
                "ce_pair": float(-np.mean(np.sum(p[1] * np.log(p[0] + 1e-12), -1))),
                "ce_marg": float(-np.mean(np.sum(p[1] * np.log(marg + 1e-12), -1))),
                "enc_pos": float(np.mean(np.diag(cos))),
                "enc_neg": float((cos.sum() - np.trace(cos)) / (n * n - n)),
                "spread": float(mon["collapse_spread"]),
                "rank": float(mon["collapse_rank"]),
            }
        )
    return {k: float(np.mean([o[k] for o in out])) for k in out[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--batches", type=int, default=4)
    args = ap.parse_args()
    with open(os.path.join(args.workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.mesh = dict(data=-1, fsdp=1)
    config.data.num_workers = 0
    mesh = sharding.make_mesh(config.mesh)
    data = pretrain.load_data(config)
    task = dino.task(config, data, mesh)
    built = run.build(config, mesh, task, data)
    it = task.make_iterator()
    batches = [next(it) for _ in range(args.batches)]
    init = built.init()
    for s in task.starts:  # The run's pretrained start, if it had one (`config.init_from`).
        init = pretrained.load_encoder(init, s.init_from, s.init_encoder, s.prefix)[0]
    states = {"init": init}
    ckpt = Checkpointer(os.path.join(args.workdir, "checkpoints"))
    for step in sorted(ckpt.manager.all_steps()):
        states[f"step {step}"] = ckpt.restore(built.abstract_state, None, step)
    ckpt.close()
    print("state      agree  chance  ce_pair  ce_marg  enc_pos  enc_neg  spread  rank")
    for name, state in states.items():
        r = readings(built.graphdef, state, batches, config)
        print(
            f"{name:9s}  {r['agree']:.3f}  {r['chance']:.3f}   {r['ce_pair']:.3f}   {r['ce_marg']:.3f}"
            f"    {r['enc_pos']:.3f}    {r['enc_neg']:.3f}   {r['spread']:.3f}  {r['rank']:.2f}"
        )


if __name__ == "__main__":
    main()
