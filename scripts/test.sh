#!/usr/bin/env bash
# Builds vitq and runs every test (unit, golden tensors, FP32 accuracy, CLI bad input) with CTest.
# Needs ../shared (the DeiT-Tiny and the ImageNet images) beside the repository.
#   scripts/test.sh [ctest args]             Release build in build/, every test
#   scripts/test.sh --sanitize [ctest args]  clang ASan+UBSan build in build-asan/, the fast tests only
#                                            (SANITIZE_TESTS below; ~5 min on 2 cores), see fuzz/README.md
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d ../shared/models/deit_tiny_patch16_224 ]; then
  echo "test: ../shared/models/deit_tiny_patch16_224 is missing (the tests need ../shared beside the repo)" >&2
  exit 1
fi
if [ "${1:-}" = "--sanitize" ]; then
  shift
  # The unit tests and the CLI's bad-input tests; not the accuracy, golden, method-search and reconstruction
  # suites, which run whole models for minutes (libtorch's kernels are not instrumented, so they add little).
  SANITIZE_TESTS=${SANITIZE_TESTS:-'^(SafeTensors|FileIo|Image|Resize|Transform|Dataset|Kernels|Ops|Executor|Passes|Observer|Quantizer|FakeQuant|Plan|TwinUniform|Log2Quantizer|PowerOfTwoFactor|IntExp|IntLayerNorm|IntSoftmax|Fqvit|HybridRoles|ReconGradients|MobileViT|EfficientFormer|Swin|OnnxHybrid|Cli|CliQuant|HybridBadInput|Reliability[A-Za-z]*|Report)\.'}
  # Skipped: the slowest CLI tests, which run whole method searches through the command line. Release times:
  # AllBlackCalibrationImages 21 s, CompareWritesTheReport 10 s; under ASan (6 December 2026) MixedPrecisionByKind
  # 155 s, AdalogAfterAnyMethod 62 s, CompareExcludesCalibrationImages 60 s, 30% of this stage's test time;
  # Liu2021Paper (three mixed-precision searches, 37 s in Release) 830 s under ASan (7 December 2026). The main
  # suite runs them; what they reach under ASan beyond the other CLI tests is method code on libtorch tensors.
  SANITIZE_SKIP=${SANITIZE_SKIP:-'^(CliQuant\.(AllBlackCalibrationImages|MixedPrecisionByKind|Liu2021Paper|AdalogAfterAnyMethod|CompareExcludesCalibrationImages)|Report\.CompareWritesTheReport)$'}
  source scripts/sanitizers.sh
  build_asan
  ctest --test-dir "$ASAN_BUILD_DIR" --output-on-failure -j 2 -R "$SANITIZE_TESTS" -E "$SANITIZE_SKIP" "$@"
  exit
fi
bash scripts/build.sh
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j 2 "$@"
