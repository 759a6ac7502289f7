#!/bin/bash
# End to end vs step speed of the default SimCLR config with on-device views (embedded sample, PNG
# folder: the host decodes), with the loop's device prefetch (--prefetch=2, core/loop.py) and without
# (--prefetch=0), alternating, twice each. Rows go to benchmarks/cpu_prefetch.md, JSON to benchmarks/json/.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks}
mkdir -p "$OUT/json"
for repeat in 1 2; do
  for depth in 0 2; do
    "$PY" -m s4mi_jax.benchmark --config=configs/simclr_chest.py --config.aug.on_device=True \
      --prefetch=$depth --steps=16 --warmup=3 --json="$OUT/json/e2e_prefetch${depth}_${repeat}.json" \
      --table="$OUT/cpu_prefetch.md" > "$OUT/json/e2e_prefetch${depth}_${repeat}.log" 2>&1
  done
done
