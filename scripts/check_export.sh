#!/usr/bin/env bash
# Checks vitq's ONNX export against ONNX Runtime on the shared DeiT-Tiny and all of val1000, and writes
# bench/results/export_ort_deit_tiny.md: per plan (W8A8; 32 calib1000 images, seed 0), vitq's fake-quant top-1,
# ONNX Runtime's top-1 on the exported file, their top-1 agreement, the largest logit difference, and the file's
# size against the shared FP32 model.onnx. About 2-4 minutes per plan on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
VITQ=${VITQ:-./build/vitq}
MODEL=../shared/models/deit_tiny_patch16_224
DATA=../shared/data/imagenet
OUT=${OUT:-bench/results/export_ort_deit_tiny.md}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fp_size=$(stat -c %s "$MODEL/model.onnx")
rows=""
for spec in "minmax:common" "liu2021:common" "ptq4vit:paper" "fqvit:common"; do
  method=${spec%%:*}
  convention=${spec##*:}
  "$VITQ" quantize "$MODEL" --method "$method" --convention "$convention" --wbits 8 --abits 8 --calib "$DATA/calib1000" \
    --calib-size 32 --seed 0 --threads 2 --quiet --out "$WORK/$method.json" >/dev/null
  "$VITQ" export "$MODEL" --plan "$WORK/$method.json" --out "$WORK/$method.onnx" >/dev/null
  log=$("$VITQ" eval "$MODEL" --plan "$WORK/$method.json" --runtime ort --onnx "$WORK/$method.onnx" \
    --data "$DATA/val1000" --threads 2 --quiet)
  echo "$log" | sed "s/^/$method: /"
  ort_top1=$(echo "$log" | sed -n 's/^top-1 *\([0-9.]*\)%.*/\1/p')
  fp_top1=$(echo "$log" | sed -n 's/^top-1 .* vs FP32 \([0-9.]*\)%.*/\1/p')
  line=$(echo "$log" | grep '^vs vitq')
  agree=$(echo "$line" | sed -n 's/.*agreement \([0-9.]*\)%.*/\1/p')
  vitq_top1=$(echo "$line" | sed -n 's/.*its top-1 \([0-9.]*\)%.*/\1/p')
  maxdiff=$(echo "$line" | sed -n 's/.*difference| \([0-9.e+-]*\).*/\1/p')
  size=$(stat -c %s "$WORK/$method.onnx")
  pct=$(awk -v a="$size" -v b="$fp_size" 'BEGIN { printf "%.1f", 100 * a / b }')
  delta=$(awk -v a="$ort_top1" -v b="$vitq_top1" 'BEGIN { printf "%+.2f", a - b }')
  rows+="| $method ($convention) | $fp_top1 | $vitq_top1 | $ort_top1 | $delta | $agree | $maxdiff | $pct |"$'\n'
done
ort_version=$("$VITQ" eval "$MODEL" --runtime ort --data "$DATA/val1000" --limit 1 --quiet | sed -n 's/^runtime *onnxruntime \([0-9.]*\).*/\1/p')
{
  echo "# vitq's QDQ export in ONNX Runtime — DeiT-Tiny, val1000 (1000 images)"
  echo
  echo "Reproduce: \`bash scripts/check_export.sh\` ($(date -u +%Y-%m-%d), onnxruntime $ort_version, 2 threads). Plans: W8A8, 32"
  echo "calib1000 images drawn with seed 0. ONNX Runtime runs the exported file with its default (all) optimisations."
  echo
  echo "| plan | FP32 top-1 | vitq fake-quant top-1 | ONNX Runtime top-1 | ORT − vitq | top-1 agreement (%) | max abs logit diff | file size (% of model.onnx) |"
  echo "|---|---|---|---|---|---|---|---|"
  printf "%s" "$rows"
} > "$OUT"
cat "$OUT"
