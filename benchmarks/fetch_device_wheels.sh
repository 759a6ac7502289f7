#!/bin/bash
# The Python packages s4mi_jax needs that the GPU machine's image lacks (its python3 is 3.12 with jax,
# flax, optax, orbax, etils, protobuf, cloudpickle, PyYAML, torch), as py3.12 manylinux x86-64 wheels,
# into .device_payload/wheels (git-ignored; carried to the machine with `carry: [".device_payload"]`).
# tensorflow-datasets is left out: s4mi_jax imports it only for TFDS-prepared data
# (data/tfds_builders.py), which device_check.py does not read. Run from the repository root.
set -euo pipefail
DEST=${1:-.device_payload/wheels}
PY=${PY:-python3}
mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 clu==0.0.12 \
  tensorboardX==2.6.5 portpicker==1.6.0
du -sh "$DEST"
