#!/bin/bash
# The CPU rows of BENCHMARKS.md: default SimCLR, DINO and CASS configs, on-device and host-side
# augmentation, each measured twice (the 2 cores are shared; run nothing else meanwhile).
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks}
mkdir -p "$OUT/json"
for repeat in 1 2; do
  for cfg in simclr_chest dino_chest cass_chest; do
    for dev in True False; do
      tag="${cfg}_ondevice${dev}_${repeat}"
      "$PY" -m s4mi_jax.benchmark --config=configs/${cfg}.py --config.aug.on_device=${dev} \
        --steps=20 --warmup=3 --json="$OUT/json/${tag}.json" --table="$OUT/cpu.md" > "$OUT/json/${tag}.log" 2>&1
    done
  done
done
