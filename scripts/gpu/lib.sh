#!/usr/bin/env bash
# Sourced by scripts/gpu/check.sh and scripts/gpu/recon.sh on the GPU machine: the digest and log helpers, the
# machine's description, and the build of the vitq CLI against that machine's pip PyTorch (libtorch with CUDA) and
# Debian 12's small dependencies from .gpu/debs (unpacked into /tmp/vitq_deps, never into /); ONNX, oneDNN and ONNX
# Runtime off, as that machine lacks them. Sets V (the CLI) and NT (cores); a failed build exits. VITQ_BIN=<cli>
# skips the build (a dry run of a script's flow, e.g. here with DEVICE=cpu).
set -uo pipefail
OUT=${OUT:-/tmp/vitq_gpu_out}
BUDGET=${BUDGET:-480}  # seconds the whole script may take
mkdir -p "$OUT"
T0=$(date +%s)
SUM="$OUT/summary.md"
LOG="$OUT/log.txt"
TMP=/tmp/vitq_gpu_tmp && rm -rf "$TMP" && mkdir -p "$TMP/plans"
say() { echo "$*" | tee -a "$SUM"; }
elapsed() { echo $(($(date +%s) - T0)); }
left() { echo $((BUDGET - $(elapsed))); }
# step NAME LIMIT CMD...: runs CMD under a time limit, its output into the log, its last lines into the digest
step() {
  local name=$1 limit=$2
  shift 2
  local s
  s=$(date +%s)
  say ""
  say "### $name"
  say "\`$*\` (limit ${limit} s, at ${s}-${T0}=$(elapsed) s)"
  timeout "$limit" "$@" >"$TMP/step.out" 2>&1
  local rc=$?
  { echo "===== $name: $*"; cat "$TMP/step.out"; } >>"$LOG"
  say '```'
  tail -n "${TAIL:-12}" "$TMP/step.out" | tee -a "$SUM"
  say '```'
  say "rc $rc, $(($(date +%s) - s)) s"
  return $rc
}

# The device's copy of .git can lag behind the tree it was sent, so the sources are named by a hash of their
# contents: `git ls-files -z src include CMakeLists.txt | xargs -0 sha1sum | sha1sum` on the committing machine.
SRC=$(git ls-files -z src include CMakeLists.txt 2>/dev/null | xargs -0 sha1sum | sha1sum | cut -c1-12)
say "# vitq on a GPU machine: ${0##*/} ($(date -u +%FT%TZ), sources $SRC)"
if [ -n "${VITQ_BIN:-}" ]; then  # a dry run of a script's flow with a CLI built elsewhere (e.g. here, on the CPU)
  V=$VITQ_BIN
  NT=$(nproc)
  return 0
fi
TAIL=20 step "machine" 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc;
  g++ --version | head -1; cmake --version | head -1; ninja --version;
  python3 -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available())"'

# ---------------------------------------------------------------------------------------------- build
D=/tmp/vitq_deps
A=x86_64-linux-gnu
rm -rf "$D" && mkdir -p "$D"
for f in .gpu/debs/*.deb; do dpkg -x "$f" "$D"; done
export LD_LIBRARY_PATH="$D/usr/lib/$A${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
TP=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
CFG=(-S . -G Ninja -DCMAKE_BUILD_TYPE=Release -DVITQ_WITH_ONNX=OFF -DVITQ_BUILD_TESTS=OFF
  -DVITQ_ORT_DIR=/nonexistent -DVITQ_DNNL_LIB=VITQ_DNNL_LIB-NOTFOUND -DCMAKE_POLICY_VERSION_MINIMUM=3.5
  "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--no-as-needed" "-DCMAKE_CXX_FLAGS=-isystem $D/usr/include/$A -include cstdint -DFMT_HEADER_ONLY=1"
  "-DJPEG_INCLUDE_DIR=$D/usr/include" "-DJPEG_LIBRARY=$D/usr/lib/$A/libjpeg.so.62" "-DJPEG_LIBRARY_RELEASE=$D/usr/lib/$A/libjpeg.so.62"
  "-DPNG_PNG_INCLUDE_DIR=$D/usr/include/libpng16" "-DPNG_LIBRARY=$D/usr/lib/$A/libpng16.so.16" "-DPNG_LIBRARY_RELEASE=$D/usr/lib/$A/libpng16.so.16"
  "-DZLIB_INCLUDE_DIR=$D/usr/include" "-DZLIB_LIBRARY=$D/lib/$A/libz.so.1.2.13" "-DZLIB_LIBRARY_RELEASE=$D/lib/$A/libz.so.1.2.13"
  "-Dfmt_DIR=$D/usr/lib/$A/cmake/fmt" "-Dnlohmann_json_DIR=$D/usr/share/cmake/nlohmann_json" "-DCLI11_DIR=$D/usr/share/cmake/CLI11")
BD=build-cuda
STAMP="$SRC $(cat scripts/gpu/lib.sh .gpu/debs/*.deb | sha1sum | cut -c1-12)"  # the sources, these flags, these packages
if [ -x "$BD/vitq" ] && [ "$(cat "$BD/sources" 2>/dev/null)" = "$STAMP" ]; then  # a warm machine's build of the same
  say "build: $BD/vitq of sources $SRC kept from an earlier call"
else
  rm -rf "$BD"
  TAIL=15 step "configure" 120 cmake -B "$BD" "${CFG[@]}" "-DCMAKE_PREFIX_PATH=$TP" || exit 1
  if ! TAIL=40 step "build" 330 cmake --build "$BD" --target vitq -j "$(nproc)" -- -k 0; then
    grep -E "error|Error" "$LOG" | head -60 >>"$SUM"
    exit 1
  fi
  echo "$STAMP" >"$BD/sources"
fi
V="$BD/vitq"
NT=$(nproc)
