# Sourced by scripts/test.sh --sanitize and scripts/fuzz.sh: the clang ASan+UBSan(+libFuzzer) build in
# build-asan/ and the sanitizer run-time options. See fuzz/README.md.
ASAN_BUILD_DIR=${ASAN_BUILD_DIR:-build-asan}

# Configures (once) and builds build-asan: everything (vitq_core, vitq, vitq_tests, the fuzz targets) with
# clang, -O1, -fsanitize=address,undefined and libFuzzer's coverage. Extra arguments are ninja targets.
build_asan() {
  if [ ! -f "$ASAN_BUILD_DIR/build.ninja" ]; then
    CC=${CC_ASAN:-clang} CXX=${CXX_ASAN:-clang++} nice -n 10 cmake -S . -B "$ASAN_BUILD_DIR" -G Ninja \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVITQ_SANITIZE=ON -DVITQ_FUZZ=ON
  fi
  nice -n 10 cmake --build "$ASAN_BUILD_DIR" -j "${JOBS:-2}" ${1:+--target "$@"}
}

# libtorch, OpenBLAS, oneDNN, libgomp and protobuf are not instrumented. ASan still sees their heap (it replaces
# malloc), so LeakSanitizer stays on: fuzz/lsan.supp names the leaks at exit that belong to those libraries
# (caches they allocate once and never free), and any leak through our code alone is still reported.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=0:check_initialization_order=1:allocator_may_return_null=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/fuzz/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:report_error_type=1}
