#!/usr/bin/env bash
# vitq's CUDA path on a GPU machine, as one command (the workplace's device tool: a fresh machine with a pip
# PyTorch built for CUDA, no network, no ../shared). Run scripts/gpu/prepare.sh here first; then, on the
# device, with .gpu carried:  OUT=<dir> bash scripts/gpu/check.sh
#
#  1. builds the vitq CLI (scripts/gpu/lib.sh) against that PyTorch's libtorch (CUDA) and Debian 12's small dependencies from .gpu/debs
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
cd "$(dirname "$0")/../.."
source scripts/gpu/lib.sh
M=.gpu/deit
VAL=.gpu/val100
CAL=.gpu/calib

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
