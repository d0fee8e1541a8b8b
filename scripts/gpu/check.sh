#!/usr/bin/env bash
# vitq's CUDA path on a GPU machine, as one command (the workplace's device tool: a fresh machine with a pip
# PyTorch built for CUDA, no network, no ../shared). Run scripts/gpu/prepare.sh here first; then, on the
# device, with .gpu carried:  OUT=<dir> bash scripts/gpu/check.sh
#
#  1. builds the vitq CLI against that PyTorch's libtorch (CUDA) and Debian 12's small dependencies from .gpu/debs
#     (unpacked into /tmp/vitq_deps, never into /); ONNX, oneDNN and ONNX Runtime off, as that machine lacks them;
#  2. FP32 on the first 100 val1000 images, --device cuda and --device cpu with the same binary, each against
#     timm's golden logits (max |difference|, top-1 agreement);
#  3. a minmax W8A8 plan evaluated by fake quantization on cuda and on cpu (logits against each other);
#  4. vitq bench --device cuda (model-only and end-to-end throughput, batch-1 latency, sgemm baseline);
#  5. the best W4A4 recipe (repqvit+adalog+recon, 128 calibration images, 1000 steps a block) with
#     --device cuda: time against the 2-core CPU run's 1862.9 s of reconstruction; its plan comes back and is
#     evaluated on all of val1000 on the CPU machine (eval --plan);
#  6. with the time left, the W3A3 recipe (repqvit+adalog+headwise+wmse+recon) with RECON_ITERS3 steps a block
#     (default: as many thousands as the W4A4 run's speed allows, at most 8000).
# QUICK=1 stops after step 3; SKIP_CHECKS=1 skips steps 2-4. Everything it prints goes to $OUT/log.txt, a digest to $OUT/summary.md, the plans to $OUT/plans.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/../.."
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
say "# vitq on a GPU machine ($(date -u +%FT%TZ), sources $SRC)"
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
rm -rf "$BD"
TAIL=15 step "configure" 120 cmake -B "$BD" "${CFG[@]}" "-DCMAKE_PREFIX_PATH=$TP" || exit 1
if ! TAIL=40 step "build" 330 cmake --build "$BD" --target vitq -j "$(nproc)" -- -k 0; then
  grep -E "error|Error" "$LOG" | head -60 >>"$SUM"
  exit 1
fi
V="$BD/vitq"
M=.gpu/deit
VAL=.gpu/val100
CAL=.gpu/calib
NT=$(nproc)

if [ -n "${SKIP_CHECKS:-}" ]; then say "SKIP_CHECKS: straight to the reconstruction runs"; else
# ---------------------------------------------------------------------------------------------- FP32, fake quant
cmp_logits() {  # golden-or-other npy, then named npy files: max |difference| and top-1 agreement against the first
  python3 - "$@" <<'EOF' | tee -a "$SUM"
import sys, numpy as np
ref = np.load(sys.argv[1])
for f in sys.argv[2:]:
    x = np.load(f)
    n = min(len(x), len(ref))
    d = np.abs(x[:n] - ref[:n])
    agree = (x[:n].argmax(1) == ref[:n].argmax(1)).mean() * 100
    print(f"{f} vs {sys.argv[1]}: {n} images, max |logit difference| {d.max():.3g}, mean {d.mean():.3g}, top-1 agreement {agree:.1f}%")
EOF
}
step "FP32 eval, cuda" 120 "$V" eval "$M" --data "$VAL" --device cuda --batch 50 --quiet --dump-logits "$TMP/fp32_cuda.npy"
step "FP32 eval, cpu" 120 "$V" eval "$M" --data "$VAL" --device cpu --batch 50 --threads "$NT" --quiet --dump-logits "$TMP/fp32_cpu.npy"
say ""
cmp_logits "$M/golden/val1000_first100_logits.npy" "$TMP/fp32_cuda.npy" "$TMP/fp32_cpu.npy"
cmp_logits "$TMP/fp32_cpu.npy" "$TMP/fp32_cuda.npy"
step "minmax W8A8 plan (CPU calibration)" 120 "$V" quantize "$M" --method minmax --wbits 8 --abits 8 --calib "$CAL" --calib-size 32 --seed 0 --threads "$NT" --quiet --out "$TMP/plans/minmax_w8a8.json"
step "fake-quant W8A8 eval, cuda" 120 "$V" eval "$M" --plan "$TMP/plans/minmax_w8a8.json" --data "$VAL" --device cuda --batch 50 --quiet --dump-logits "$TMP/q8_cuda.npy"
step "fake-quant W8A8 eval, cpu" 120 "$V" eval "$M" --plan "$TMP/plans/minmax_w8a8.json" --data "$VAL" --device cpu --batch 50 --threads "$NT" --quiet --dump-logits "$TMP/q8_cpu.npy"
say ""
cmp_logits "$TMP/q8_cpu.npy" "$TMP/q8_cuda.npy"
if [ -n "${QUICK:-}" ]; then say "QUICK: stopped after the logit checks, $(elapsed) s"; exit 0; fi

# ---------------------------------------------------------------------------------------------- bench
TAIL=30 step "bench, cuda" 150 "$V" bench "$M" --data "$VAL" --device cuda --batch 64 --iters 20 --threads "$NT" --out "$OUT/bench"
fi

# ---------------------------------------------------------------------------------------------- reconstruction
RECON4=0
if [ "$(left)" -gt 200 ]; then
  s=$(date +%s)
  TAIL=20 step "W4A4 repqvit+adalog+recon, 128 images, 1000 steps, cuda" $(($(left) - 60)) \
    "$V" quantize "$M" --method repqvit+adalog+recon --wbits 4 --abits 4 --calib "$CAL" --calib-size 128 --seed 0 \
    --recon-iters 1000 --device cuda --threads "$NT" --out "$TMP/plans/repqvit_adalog_recon_w4a4_c128_cuda.json" && RECON4=$(($(date +%s) - s))
fi
if [ "$RECON4" -gt 0 ]; then
  ITERS3=${RECON_ITERS3:-}
  if [ -z "$ITERS3" ]; then  # thousands of steps that fit in the time left, with a minute spare
    k=$(((($(left) - 60) * 1000 / RECON4) / 1000))
    [ "$k" -gt 8 ] && k=8
    ITERS3=$((k * 1000))
  fi
  if [ "$ITERS3" -ge 1000 ]; then
    TAIL=20 step "W3A3 repqvit+adalog+headwise+wmse+recon, 128 images, $ITERS3 steps, cuda" $(($(left) - 15)) \
      "$V" quantize "$M" --method repqvit+adalog+headwise+wmse+recon --wbits 3 --abits 3 --calib "$CAL" --calib-size 128 \
      --seed 0 --recon-iters "$ITERS3" --device cuda --threads "$NT" --out "$TMP/plans/repqvit_adalog_headwise_wmse_recon_w3a3_c128_i${ITERS3}_cuda.json"
  else
    say "W3A3: skipped, $(left) s left"
  fi
fi
tar -C "$TMP/plans" -czf "$OUT/plans.tar.gz" .
say ""
say "done in $(elapsed) s"
