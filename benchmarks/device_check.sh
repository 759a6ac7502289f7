#!/bin/bash
# One command for the GPU machine (benchmarks/device_check.py says what it measures):
#   bash benchmarks/device_check.sh OUT_DIR [--tiny] [more device_check.py flags]
# Installs the wheels of .device_payload/wheels (benchmarks/fetch_device_wheels.sh) when the packages
# are missing, then runs the check; everything lands in OUT_DIR, the table is printed last.
set -uo pipefail
OUT=${1:?usage: benchmarks/device_check.sh OUT_DIR [--tiny] [flags]}
shift
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if ! "$PY" -c "import grain, ml_collections, clu" 2>/dev/null; then
  if ls .device_payload/wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/s4mi_site .device_payload/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/s4mi_site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "device_check: grain/ml_collections/clu missing and no .device_payload/wheels" >&2
    exit 1
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
du -sh .device_payload 2>/dev/null | sed 's/^/device_check: payload /'
"$PY" benchmarks/device_check.py --out="$OUT" "$@" 2>&1 | tee "$OUT/device_check.log"
