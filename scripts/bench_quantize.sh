#!/usr/bin/env bash
# Benchmark: wall time of calibration (image loading) and search for a method on the shared DeiT-Tiny,
# 32 calib1000 images, seed 0, 2 threads; median of RUNS runs. Writes bench/results/quantize_<method>_<bits>.md.
# Options after the fourth argument go to `vitq quantize` (e.g. --convention common); a reconstruction's line
# (blocks, steps, batch, QDrop, loss, its own time) is copied into the result.
#   usage: scripts/bench_quantize.sh [METHOD] [WBITS] [ABITS] [RUNS] [QUANTIZE OPTIONS...]
set -euo pipefail
cd "$(dirname "$0")/.."
METHOD=${1:-liu2021}; WBITS=${2:-6}; ABITS=${3:-6}; RUNS=${4:-3}
EXTRA=("${@:5}")
VITQ=${VITQ:-./build/vitq}
MODEL=../shared/models/deit_tiny_patch16_224
CALIB=../shared/data/imagenet/calib1000
OUT=bench/results/quantize_${METHOD//+/_}_w${WBITS}a${ABITS}.md
loads=(); searches=(); recons=()
for i in $(seq "$RUNS"); do
  log=$("$VITQ" quantize "$MODEL" --method "$METHOD" --wbits "$WBITS" --abits "$ABITS" --calib "$CALIB" \
        --calib-size 32 --seed 0 --threads 2 --quiet --out /tmp/vitq_bench_plan.json "${EXTRA[@]}")
  recons+=("$(echo "$log" | sed -n 's/^recon *//p')")
  loads+=("$(echo "$log" | sed -n 's/.*loaded in \([0-9.]*\) s.*/\1/p')")
  searches+=("$(echo "$log" | sed -n 's/^search *\([0-9.]*\) s.*/\1/p')")
  echo "run $i: calibration images ${loads[-1]} s, search ${searches[-1]} s"
done
# baseline in the same run: plain min/max calibration at the same bits
baselines=()
for i in $(seq "$RUNS"); do
  log=$("$VITQ" quantize "$MODEL" --method minmax --wbits "$WBITS" --abits "$ABITS" --calib "$CALIB" \
        --calib-size 32 --seed 0 --threads 2 --quiet --out /tmp/vitq_bench_plan.json)
  baselines+=("$(echo "$log" | sed -n 's/^search *\([0-9.]*\) s.*/\1/p')")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
{
  echo "# Quantization time: $METHOD W${WBITS}A${ABITS} on deit_tiny_patch16_224"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), 32 calib1000 images (seed 0), 2 threads, $RUNS runs, $(nproc) cores."
  echo "Reproduce: \`scripts/bench_quantize.sh $METHOD $WBITS $ABITS $RUNS${EXTRA[*]:+ ${EXTRA[*]}}\`"
  echo
  echo "| step | median | runs |"
  echo "|---|---|---|"
  echo "| load + preprocess calibration images | $(median "${loads[@]}") s | ${loads[*]} |"
  echo "| calibration + search ($METHOD) | $(median "${searches[@]}") s | ${searches[*]} |"
  echo "| baseline, same run: min/max calibration | $(median "${baselines[@]}") s | ${baselines[*]} |"
  if [ -n "${recons[0]}" ]; then
    echo
    for i in "${!recons[@]}"; do echo "Run $((i + 1)) reconstruction: ${recons[$i]}"; echo; done
  fi
} > "$OUT"
cat "$OUT"
