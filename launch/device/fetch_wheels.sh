#!/bin/bash
# Downloads, into .whl/ (git-ignored), the wheels of the packages this project needs that the lent GPU machines'
# image lacks (it has jax[cuda], flax, optax, orbax, torch, torchvision, scikit-learn, ...; Python 3.12, x86-64).
# Run it here (with network) before a device session; launch/device/gpu_check.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
# Compiled packages: the cp312 x86-64 wheels. Pure-Python ones: built here as py3 wheels (some are sdists only).
COMPILED=(array-record dm-tree grain)
PURE=(dm-pix docstring-parser googleapis-common-protos immutabledict ml-collections portpicker promise simple-parsing
      tensorflow-datasets tensorflow-metadata termcolor toml tzdata zipp)
# The versions the tests passed with under the image's JAX (0.11.2), whatever the image holds.
PINNED=(flax==0.12.12 optax==0.2.8 orbax-checkpoint==0.12.8)
PLATFORMS=()
for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 \
         manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  PLATFORMS+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d .whl "${COMPILED[@]}" "${PINNED[@]}"
python3 -m pip wheel -q --no-deps -w .whl "${PURE[@]}"
ls .whl
