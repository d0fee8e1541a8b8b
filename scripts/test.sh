#!/usr/bin/env bash
# Builds vitq and runs every test (unit, golden tensors, FP32 accuracy, CLI bad input) with CTest.
# Needs ../shared (the DeiT-Tiny and the ImageNet images) beside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d ../shared/models/deit_tiny_patch16_224 ]; then
  echo "test: ../shared/models/deit_tiny_patch16_224 is missing (the tests need ../shared beside the repo)" >&2
  exit 1
fi
bash scripts/build.sh
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j 2 "$@"
