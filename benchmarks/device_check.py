"""The GPU machine's one prepared command: throughput vs PyTorch, MFU, memory, and a first claim run.

    bash benchmarks/device_check.sh OUT_DIR           # one H200: <= 8 minutes (--budget_s=420)
    bash benchmarks/device_check.sh OUT_DIR --tiny    # the whole script on a CPU in seconds (a test)

Rows, in order of what matters most, each skipped with a note when the time left (`--budget_s`) is
less than it needs, and each recorded as failed (with the error's first line) rather than stopping the
script:

1. `matmul`: the bf16 8192^3 matrix-product rate of this device, measured here (the MFU denominator).
2. `simclr`, `dino`, `cass`, `fixmatch_seg`: `s4mi_jax.benchmark` rows of the research configs
   (SimCLR ResNet-50 @224 bf16 with on-device views, DINO ViT-S/16 multi-crop, CASS ResNet-50 + ViT-B/16,
   FixMatch-seg U-Net at 224) on the pre-decoded chest X-rays (`--data`; FixMatch on the embedded
   nuclei sample). The per-chip batch is the largest of a few that fits: each is compiled first
   (`s4mi_jax.aot`) and kept only if XLA's peak estimate is under 92% of the device's memory.
   MFU is given against the data sheet and against row 1.
3. `torch_reference`: `benchmarks/reference_torch.py` (a subprocess: torch never enters s4mi_jax) at
   SimCLR's batch, eager and, time permitting, `torch.compile`; the ratio to row `simclr`.
4. `claim`: SimCLR pretraining at research width (ResNet-50, bf16) on the chest X-rays for about
   `--claim_pretrain_s` seconds, then fine-tuning vs supervised training at 1% and 10% labels; test
   AUROC and macro-F1 (one seed: a first look, not a result).

Everything goes to OUT_DIR: `device_check.json` (every row, with its command-line equivalent, errors and
versions), `table.md`, and a log per run; the table is printed last.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from s4mi_jax import aot, benchmark, trainers  # noqa: E402
from s4mi_jax.core import compile_cache, run  # noqa: E402

# (row, config file, variant, overrides, per-chip batch candidates (full run), per-chip batch (tiny)).
ROWS: tuple[tuple[str, str, str, dict[str, Any], tuple[int, ...], int], ...] = (
    ("simclr", "configs/simclr_chest.py", "research", {}, (512, 256, 128), 4),
    ("dino", "configs/dino_chest.py", "research", {"aug.on_device": True}, (256, 128, 64), 4),
    ("cass", "configs/cass_chest.py", "research", {}, (64, 32, 16), 2),
    (
        "fixmatch_seg",
        "configs/fixmatch_seg_ph2.py",
        "sample,reference,label_fraction=0.5",
        {},
        (32, 16, 8),
        2,
    ),
)
TINY_VARIANT = {"fixmatch_seg": "sample,local,label_fraction=0.5"}
# Seconds a row needs on an H200 (compile + measure), from which the budget check decides.
COST_S = {"simclr": 100, "dino": 100, "cass": 120, "fixmatch_seg": 60, "torch": 60, "claim": 200}


def log(msg: str) -> None:
    print(f"[device_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]


def load_config(path: str, variant: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.get_config(variant)


def set_key(config, key: str, value: Any) -> None:
    node = config
    *path, last = key.split(".")
    for p in path:
        node = node[p]
    node[last] = value


def matmul_rate(n: int, dtype: str = "bfloat16", repeats: int = 10) -> dict:
    """Mean FLOP/s of `repeats` n^3 products after 3 warm-ups (random data)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.dtype(dtype))
    f = jax.jit(lambda x, y: x @ y)
    for _ in range(3):
        jax.block_until_ready(f(a, b))
    t = time.perf_counter()
    for _ in range(repeats):
        out = f(a, b)
    jax.block_until_ready(out)
    s = (time.perf_counter() - t) / repeats
    return {"n": n, "dtype": dtype, "flops_per_s": 2 * n**3 / s, "ms": 1e3 * s}


def _device_limit() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def bench_row(name, path, variant, overrides, candidates, args, matmul) -> dict:
    """The largest per-chip batch of `candidates` that fits, then `s4mi_jax.benchmark.run` at it."""
    ndev = jax.device_count()
    limit = _device_limit()
    tried = []
    for per_chip in candidates:
        config = load_config(path, variant)
        config.data.verify = False
        for k, v in overrides.items():
            set_key(config, k, v)
        config.batch_size = per_chip * ndev
        if "unlabeled_batch_size" in config:
            config.unlabeled_batch_size = per_chip * ndev
        if name != "fixmatch_seg":
            config.data.root = args.data
            config.data.num_workers = 0 if args.tiny else min(8, os.cpu_count() or 1)
        if "source_size" in config.aug:
            config.aug.source_size = args.source_size
        t = time.perf_counter()
        if limit is None and len(candidates) == 1:  # A CPU: no memory limit to check against.
            report, compile_s = {}, None
        else:
            try:
                report = aot.analyze(copy.deepcopy(config), None)
            except aot.DoesNotFit as e:
                tried.append({"per_chip_batch": per_chip, "fits": False, "why": str(e)})
                continue
            compile_s = time.perf_counter() - t
        peak = report.get("peak_bytes_per_device", -1)
        if limit and peak > 0.92 * limit:
            why = f"XLA peak estimate {peak / 2**30:.1f} GiB > 92% of {limit / 2**30:.1f} GiB"
            tried.append({"per_chip_batch": per_chip, "fits": False, "why": why})
            continue
        tried.append({"per_chip_batch": per_chip, "fits": True, "peak_estimate_bytes": peak})
        try:
            result = benchmark.run(
                config, steps=args.steps, warmup=args.warmup, name=f"{path}:{variant}"
            )
        except Exception as e:  # A runtime OOM: the next smaller batch.
            if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
                tried[-1].update(fits=False, why=first_line(e))
                continue
            raise
        result.update(
            row=name,
            status="ok",
            per_chip_batch=per_chip,
            batch_search=tried,
            cold_compile_s=result["compile_s"] if compile_s is None else compile_s,
            mfu_vs_measured_matmul=(
                result["achieved_flops_per_s"] / ndev / matmul["flops_per_s"]
                if matmul and result["flops_per_step"] > 0
                else float("nan")
            ),
        )
        return result
    return {
        "row": name,
        "status": "failed",
        "note": "no candidate batch fits",
        "batch_search": tried,
    }


def torch_row(args, batch: int, compile_: bool) -> dict:
    """benchmarks/reference_torch.py in a subprocess (torch stays out of this process)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
        return {"row": "torch_reference", "status": "skipped", "note": "torch/torchvision absent"}
    out = os.path.join(args.out, f"torch{'_compile' if compile_ else ''}.json")
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "reference_torch.py"), f"--json={out}"]
    if args.tiny:
        cmd += ["--arch=resnet18", "--batch=4", "--image_size=32", "--source_size=32"]
        cmd += ["--hidden=16", "--out_dim=8", "--steps=2", "--warmup=1"]
    else:
        cmd += [f"--batch={batch}", f"--source_size={args.source_size}", "--steps=20"]
    if compile_:
        cmd.append("--compile")
    with open(os.path.join(args.out, f"torch{'_compile' if compile_ else ''}.log"), "w") as f:
        run = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(60, args.left()))
    if run.returncode != 0:
        return {"row": "torch_reference", "status": "failed", "note": f"exit {run.returncode}"}
    with open(out) as f:
        result = json.load(f)
    result.update(row="torch_reference" + ("_compile" if compile_ else ""), status="ok")
    result["command"] = " ".join(cmd[1:])
    return result


def claim_run(args, simclr: dict | None) -> dict:
    """Pretrain SimCLR (research width) for ~claim_pretrain_s, then finetune vs supervised."""
    from configs import common

    work = os.path.join(args.out, "claim")
    size = args.source_size
    pre = load_config("configs/simclr_chest.py", "local" if args.tiny else "research")
    pre.data.verify, pre.data.root = False, args.data
    pre.eval.linear_probe, pre.eval.probe_at_init = False, False
    if args.tiny:
        steps, pre.batch_size = 2, 8
    else:
        pre.aug.image_size, pre.aug.source_size = size, size
        pre.batch_size = 512
        # Steps for ~claim_pretrain_s: the measured 224 px step, scaled by pixels and batch.
        step_s = (simclr or {}).get("synthetic_step_ms", 400.0) / 1e3
        step_s *= (size / 224) ** 2 * 512 / (simclr or {}).get("global_batch", 512)
        steps = int(min(3000, max(30, args.claim_pretrain_s / max(step_s, 1e-3))))
        pre.optim.warmup_epochs = 2.0
    pre.total_steps, pre.ckpt_every, pre.log_every = steps, steps, max(1, steps // 10)
    t = time.perf_counter()
    pre_results = run.run(pre, os.path.join(work, "pretrain"), trainers.get("simclr"))
    pretrain_s = time.perf_counter() - t
    cells = []
    for method in ("supervised", "finetune"):
        for frac in (0.01, 0.1):
            arg = f"label_fraction={frac}" + (",local" if args.tiny else "")
            cfg = common.classification_config(method, arg)
            cfg.data.verify, cfg.data.root = False, args.data
            if not args.tiny:
                cfg.model.update(name="resnet50", width=64, dtype="bfloat16")
                cfg.aug.image_size = size
                cfg.total_steps, cfg.eval_every, cfg.ckpt_every = args.claim_steps, 100, 10**6
                cfg.eval.bootstrap = 200
            else:
                cfg.total_steps, cfg.eval_every, cfg.ckpt_every, cfg.log_every = 2, 2, 10**6, 2
                cfg.eval.bootstrap = 10
            if method == "finetune":
                cfg.init_from = os.path.join(work, "pretrain")
            t = time.perf_counter()
            res = run.run(cfg, os.path.join(work, f"{method}_{frac}"), trainers.get("classify"))
            cells.append(
                {
                    "method": method,
                    "label_fraction": frac,
                    "num_train_labeled": res.get("num_train"),
                    "test_auroc": res["test"].get("auroc"),
                    "test_macro_f1": res["test"].get("macro_f1"),
                    "test_ci95": res.get("test_ci95"),
                    "wall_s": time.perf_counter() - t,
                }
            )
            log(f"claim {method} {frac:.0%}: {cells[-1]}")
    return {
        "row": "claim",
        "status": "ok",
        "pretrain_steps": steps,
        "pretrain_batch": pre.batch_size,
        "image_size": pre.aug.image_size,
        "pretrain_s": pretrain_s,
        "pretrain_final_loss": pre_results.get("final_loss", pre_results.get("train_loss")),
        "cells": cells,
    }


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.{digits}g}"
    return "–" if v is None else str(v)


def table(rows: list[dict], ratio: dict) -> str:
    lines = [
        "| row | status | per-chip batch | step ms | step ex/s | e2e ex/s | MFU (sheet) | "
        "MFU (measured matmul) | peak GiB | compile s (cold) | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["row"] == "claim":
            continue
        if r["row"] == "matmul" and r["status"] == "ok":
            lines.append(
                f"| matmul | ok | – | {_fmt(r['ms'])} | – | – | – | "
                f"{r['flops_per_s'] / 1e12:.3g} TFLOP/s ({r['dtype']} {r['n']}^3) | – | – | |"
            )
            continue
        if r["row"].startswith("torch_reference") and r["status"] == "ok":
            lines.append(
                f"| {r['row']} | ok | {r['batch']} | {_fmt(r['step_ms'])} | "
                f"{_fmt(r['examples_per_s'])} | – | – | – | "
                f"{_fmt(r['peak_memory_mib'] / 1024)} | {_fmt(r['warmup_s'])} (warm-up) | "
                f"{r['framework']} |"
            )
            continue
        if r["status"] != "ok":
            lines.append(f"| {r['row']} | {r['status']} | | | | | | | | | {r.get('note', '')} |")
            continue
        lines.append(
            f"| {r['row']} | ok | {r['per_chip_batch']} | {_fmt(r['synthetic_step_ms'])} | "
            f"{_fmt(r['synthetic_examples_per_s'])} | {_fmt(r['e2e_examples_per_s'])} | "
            f"{_fmt(r['mfu'])} | {_fmt(r['mfu_vs_measured_matmul'])} | "
            f"{_fmt(r['peak_memory_bytes'] / 2**30)} | {_fmt(r['cold_compile_s'])} | "
            f"{r['peak_memory_source']} |"
        )
    for k, v in ratio.items():
        lines.append(f"\n**{k}**: {_fmt(v)}")
    claim = next((r for r in rows if r["row"] == "claim"), None)
    if claim and claim["status"] == "ok":
        lines += [
            "",
            f"Claim run: SimCLR pretraining {claim['pretrain_steps']} steps x batch "
            f"{claim['pretrain_batch']} at {claim['image_size']} px ({claim['pretrain_s']:.0f} s), "
            "then (one seed):",
            "",
            "| method | labels | test AUROC | test macro-F1 |",
            "|---|---|---|---|",
        ]
        for c in claim["cells"]:
            lines.append(
                f"| {c['method']} | {c['label_fraction']:.0%} | {_fmt(c['test_auroc'])} | "
                f"{_fmt(c['test_macro_f1'])} |"
            )
    elif claim:
        lines.append(f"\nClaim run: {claim['status']}: {claim.get('note', '')}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="CPU, :local configs, seconds.")
    p.add_argument("--budget_s", type=float, default=None, help="Default: 420 (tiny: no limit).")
    p.add_argument("--data", default=os.path.join(ROOT, ".device_payload", "cxr_96.npz"))
    p.add_argument("--source_size", type=int, default=96)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--claim_pretrain_s", type=float, default=120.0)
    p.add_argument("--claim_steps", type=int, default=300)
    p.add_argument("--rows", default="simclr,torch,claim,dino,fixmatch_seg,cass")
    args = p.parse_args()
    t0 = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    if args.tiny:  # The embedded samples, one step each, XLA's quick compile (as the tests).
        args.steps, args.warmup, args.data = 1, 1, None
        jax.config.update("jax_disable_most_optimizations", True)
    if args.budget_s is None:
        args.budget_s = 1e9 if args.tiny else 420.0
    args.left = lambda: args.budget_s - (time.perf_counter() - t0)
    compile_cache.enable()  # Each row's second compile (benchmark after aot) loads the first's.
    header = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "bash benchmarks/device_check.sh " + " ".join(sys.argv[1:]),
        "device": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform,
        "devices": jax.device_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "data": args.data,
        "budget_s": args.budget_s,
    }
    log(f"{header['devices']} x {header['device']} ({header['platform']}), jax {jax.__version__}")
    rows: list[dict] = []
    ratio: dict[str, float] = {}

    def save() -> None:
        with open(os.path.join(args.out, "device_check.json"), "w") as f:
            json.dump({**header, "rows": rows, "ratios": ratio}, f, indent=2, default=str)

    def attempt(name: str, fn) -> dict | None:
        if args.left() < (5 if args.tiny else COST_S.get(name, 60)):
            rows.append({"row": name, "status": "skipped", "note": "time budget spent"})
            log(f"{name}: skipped (time budget)")
            save()
            return None
        log(f"{name}: start ({args.left():.0f} s left)")
        t = time.perf_counter()
        try:
            result = fn()
        except Exception as e:
            result = {"row": name, "status": "failed", "note": first_line(e)}
            traceback.print_exc()
        result["wall_s"] = time.perf_counter() - t
        rows.append(result)
        log(f"{name}: {result['status']} in {result['wall_s']:.0f} s {result.get('note', '')}")
        save()
        return result

    mm = attempt(
        "matmul",
        lambda: {
            "row": "matmul",
            "status": "ok",
            **matmul_rate(256 if args.tiny else 8192, "float32" if args.tiny else "bfloat16"),
        },
    )
    matmul = mm if mm and mm["status"] == "ok" else None
    wanted = args.rows.split(",")
    simclr = None
    for name in wanted:
        spec = next((r for r in ROWS if r[0] == name), None)
        if spec is not None:
            _, path, variant, overrides, candidates, tiny_batch = spec
            if args.tiny:
                variant, candidates = TINY_VARIANT.get(name, "local"), (tiny_batch,)
            r = attempt(
                name,
                lambda n=name, s=(path, variant, overrides, candidates): bench_row(
                    n, *s, args, matmul
                ),
            )
            if name == "simclr" and r and r["status"] == "ok":
                simclr = r
        elif name == "torch":
            batch = simclr["global_batch"] if simclr else 256
            eager = attempt("torch", lambda b=batch: torch_row(args, b, False))
            if simclr and eager and eager["status"] == "ok":
                ratio["s4mi_jax / torch eager (SimCLR step ex/s)"] = (
                    simclr["synthetic_examples_per_s"] / eager["examples_per_s"]
                )
            if not args.tiny and eager and eager["status"] == "ok":
                comp = attempt("torch", lambda b=batch: torch_row(args, b, True))
                if simclr and comp and comp["status"] == "ok":
                    ratio["s4mi_jax / torch.compile (SimCLR step ex/s)"] = (
                        simclr["synthetic_examples_per_s"] / comp["examples_per_s"]
                    )
        elif name == "claim":
            attempt("claim", lambda s=simclr: claim_run(args, s))
    save()
    text = table(rows, ratio)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text + "\n")
    log(f"done in {time.perf_counter() - t0:.0f} s; {args.out}/device_check.json")
    print(text, flush=True)


if __name__ == "__main__":
    main()
