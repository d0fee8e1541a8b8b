#!/usr/bin/env bash
# Installs every build and run-time dependency of vitq from Debian 12 packages. Idempotent: a second run
# installs nothing and only re-checks the BLAS selection.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev                      # tensors, autograd (libtorch 1.13)
  libopenblas0-openmp libopenblas-dev # fast BLAS for libtorch (selected below)
  libdnnl-dev                       # int8 kernels (later issues)
  libonnx-dev libprotobuf-dev protobuf-compiler
  libjpeg62-turbo-dev libpng-dev    # image decoding
  libcli11-dev nlohmann-json3-dev libfmt-dev libspdlog-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  chromium                          # the report test loads vitq report's HTML in headless Chromium
  clang libclang-rt-14-dev libomp-dev # the sanitizer build and the fuzz targets: clang, its ASan/UBSan/libFuzzer
                                    # run-times, its OpenMP run-time (scripts/test.sh --sanitize, scripts/fuzz.sh)
)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi

# libtorch calls BLAS through libblas.so.3 / liblapack.so.3. Without OpenBLAS-openmp selected it runs on the
# reference BLAS (~6 GFLOP/s instead of ~190 on two cores). It also links libopenblas.so.0 itself, and that one
# is the OpenBLAS that gets loaded: libopenblas-dev pulls in the pthreads build, whose alternative outranks the
# OpenMP one, and its threads spin on sched_yield beside libtorch's OpenMP threads (docs/decisions.md). So all
# three point at the OpenMP build.
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
for lib in libblas.so.3 liblapack.so.3 libopenblas.so.0; do
  alt="/usr/lib/$arch/openblas-openmp/$lib"
  if [ -e "$alt" ]; then
    $SUDO update-alternatives --set "$lib-$arch" "$alt" >/dev/null
  fi
done
echo "setup: BLAS -> $(readlink -f /usr/lib/$arch/libblas.so.3), OpenBLAS -> $(readlink -f /usr/lib/$arch/libopenblas.so.0)"

# ONNX Runtime 1.30 (the independent check of exported models, and the baseline of `vitq bench`), from npm:
# onnxruntime-node carries libonnxruntime.so.1 (its install step would download more, hence the skip), and
# com.github.asus4.onnxruntime the C API headers. vitq loads the library at run time; without it the tests that
# need it are skipped with a message.
ORT_DIR="$(cd "$(dirname "$0")/.." && pwd)/.deps/ort"
ORT_LIB="$ORT_DIR/node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime.so.1"
ORT_HDR="$ORT_DIR/node_modules/com.github.asus4.onnxruntime/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers/onnxruntime_c_api.h"
if ! command -v npm >/dev/null; then  # Debian's npm only when none is installed (it conflicts with other Node.js)
  echo "setup: installing nodejs npm"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi
if [ -f "$ORT_LIB" ] && [ -f "$ORT_HDR" ]; then
  echo "setup: ONNX Runtime present ($ORT_DIR)"
else
  echo "setup: installing ONNX Runtime 1.30.0 from npm into $ORT_DIR"
  mkdir -p "$ORT_DIR"
  (cd "$ORT_DIR" && ONNXRUNTIME_NODE_INSTALL=skip npm install --no-audit --no-fund --loglevel=error \
     onnxruntime-node@1.30.0 com.github.asus4.onnxruntime@0.4.9 >/dev/null)
  [ -f "$ORT_LIB" ] && [ -f "$ORT_HDR" ] || { echo "setup: ONNX Runtime install incomplete under $ORT_DIR" >&2; exit 1; }
fi
