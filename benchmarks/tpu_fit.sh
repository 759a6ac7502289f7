#!/bin/bash
# The TPU fit table of docs/accelerators.md: each research config compiled by XLA:TPU (libtpu, no TPU
# needed) for each topology, one compile at a time at nice 19, wall time next to each result.
#   PY=/path/to/venv-with-libtpu/bin/python bash benchmarks/tpu_fit.sh [OUT_DIR]
#   ROWS="cass_v5e-8 fixmatch_v5e-8" ... runs only the named rows.
# A config that does not fit ends with the one-line message (exit 2) in a few tens of seconds; one that
# fits is a full compile (20+ minutes on a loaded 2-core machine). Results: OUT_DIR/<row>.json / .log,
# OUT_DIR/summary.txt.
set -u
PY=${PY:-python}
OUT=${1:-benchmarks/tpu}
mkdir -p "$OUT"
S=configs/simclr_chest.py:research; D=configs/dino_chest.py:research
C=configs/cass_chest.py:research; F=configs/fixmatch_seg_ph2.py:reference
row() {  # name topology config [flags]
  local name=$1 topo=$2 cfg=$3; shift 3
  if [[ -n "${ROWS:-}" && " $ROWS " != *" $name "* ]]; then return; fi
  local start; start=$(date +%s)
  nice -n 19 "$PY" -m s4mi_jax.aot --config="$cfg" --topology="$topo" --json="$OUT/$name.json" \
    --compile_cache=off "$@" > "$OUT/$name.raw.log" 2>&1
  local rc=$? wall=$(( $(date +%s) - start ))
  # Keep the report and the one-line error; drop libtpu's start-up noise (no TPU attached).
  grep -v -E '^[IWE][0-9]{4} |^WARNING|^=== Source|^learning/|^Failed to find host|^$' \
    "$OUT/$name.raw.log" > "$OUT/$name.log"
  rm -f "$OUT/$name.raw.log"
  echo "rc=$rc wall_s=$wall cmd: python -m s4mi_jax.aot --config=$cfg --topology=$topo $*" >> "$OUT/$name.log"
  echo "$name rc=$rc wall_s=$wall" >> "$OUT/summary.txt"
}
row simclr_v5e-8 v5e:2x4 $S --fit_search=0
row simclr_v4-8 v4:2x2x1 $S --fit_search=0
row dino_v5e-8 v5e:2x4 $D --fit_search=0
row cass_v5e-8 v5e:2x4 $C --fit_search=0
row fixmatch_v5e-8 v5e:2x4 $F --fit_search=0
row simclr_v5e-16 v5e:4x4 $S --fit_search=0
row simclr_v5p-8 v5p:2x2x1 $S --fit_search=0
row dino_v4-8 v4:2x2x1 $D --fit_search=0
row simclr_v5e-32 v5e:4x8 $S --fit_search=0
row dino_v5e-16 v5e:4x4 $D --fit_search=0
row fixmatch_v4-8 v4:2x2x1 $F --fit_search=0
row fixmatch_v5e-16 v5e:4x4 $F --fit_search=0
row fixmatch_v5e-32 v5e:4x8 $F --fit_search=0
row fixmatch_v5p-8 v5p:2x2x1 $F --fit_search=0
row dino_v5e-32 v5e:4x8 $D --fit_search=0
row dino_v5p-8 v5p:2x2x1 $D --fit_search=0
row cass_v5e-32 v5e:4x8 $C --fit_search=0
row cass_v5e-16 v5e:4x4 $C --fit_search=0
row cass_v4-8 v4:2x2x1 $C --fit_search=0
row cass_v5p-8 v5p:2x2x1 $C --fit_search=0
