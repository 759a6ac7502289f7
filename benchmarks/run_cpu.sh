#!/bin/bash
# The CPU rows of BENCHMARKS.md: the default SimCLR, DINO and CASS configs with on-device and host-side
# augmentation, both reading the embedded sample from a pre-decoded .npz cache at its native 128 px
# (python -m s4mi_jax.data.cache), plus SimCLR on-device reading the PNG folder (decode on the host).
# Every row twice; the 2 cores are shared with other work, so run nothing else of your own meanwhile.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks}
CACHE=${CACHE:-/tmp/s4mi_sample_128.npz}
mkdir -p "$OUT/json"
"$PY" -m s4mi_jax.data.cache --size=128 --out="$CACHE"
bench() {  # tag, then benchmark arguments
  local tag=$1; shift
  "$PY" -m s4mi_jax.benchmark --steps=16 --warmup=3 --json="$OUT/json/$tag.json" \
    --table="$OUT/cpu.md" "$@" > "$OUT/json/$tag.log" 2>&1
}
for repeat in 1 2; do
  for cfg in simclr_chest dino_chest cass_chest; do
    for dev in True False; do
      bench "${cfg}_cache_ondevice${dev}_${repeat}" --config=configs/${cfg}.py \
        --config.aug.on_device=${dev} --config.data.root="$CACHE"
    done
  done
  bench "simclr_chest_folder_ondeviceTrue_${repeat}" --config=configs/simclr_chest.py \
    --config.aug.on_device=True
done
# FixMatch-seg (configs/fixmatch_seg_ph2.py:ph2, the default's model: U-Net width 16, 64 px, 8 labeled + 8 unlabeled
# images per step; paired geometry and the strong view on the host, CutMix in the step) on the shared
# PH2 folder; run from the repository root with ../shared/data present.
for repeat in 1 2; do
  bench "fixmatch_seg_ph2_${repeat}" --config=configs/fixmatch_seg_ph2.py:ph2,label_fraction=0.5 \
    --config.data.root=../shared/data/ph2_dermoscopy
done
