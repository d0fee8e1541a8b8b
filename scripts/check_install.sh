#!/usr/bin/env bash
# Installs vitq from a build folder into a temporary prefix, builds examples/quantize_eval against the installed
# CMake package (find_package(vitq), vitq::vitq) and runs it on the shared DeiT-Tiny: quantize W8A8 with minmax
# on 8 calibration images, evaluate 32 images against FP32, save and reload the plan. Also checks that the
# example's compile commands name no libtorch header folder. Run by CTest (Install.ExampleAgainstInstalledPackage).
#   scripts/check_install.sh [BUILD_DIR=build]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=$(cd "${1:-build}" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cmake --install "$BUILD" --prefix "$WORK/prefix" > "$WORK/install.log"
echo "installed: $(cd "$WORK/prefix" && find . -type f | sort | tr '\n' ' ')"
cmake -S examples/quantize_eval -B "$WORK/example" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$WORK/prefix" \
  -DCMAKE_EXPORT_COMPILE_COMMANDS=ON > "$WORK/configure.log"
cmake --build "$WORK/example" > "$WORK/build.log"
if grep -q "torch" "$WORK/example/compile_commands.json"; then
  echo "check_install: the example's compile commands include libtorch:" >&2
  cat "$WORK/example/compile_commands.json" >&2
  exit 1
fi
"$WORK/example/quantize_eval" ../shared/models/deit_tiny_patch16_224 ../shared/data/imagenet/calib1000 \
  ../shared/data/imagenet/val1000 32 "$WORK/plan.json"
