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
# reference BLAS (~6 GFLOP/s instead of ~190 on two cores).
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
for lib in libblas.so.3 liblapack.so.3; do
  alt="/usr/lib/$arch/openblas-openmp/$lib"
  if [ -e "$alt" ]; then
    $SUDO update-alternatives --set "$lib-$arch" "$alt" >/dev/null
  fi
done
echo "setup: BLAS -> $(readlink -f /usr/lib/$arch/libblas.so.3)"
