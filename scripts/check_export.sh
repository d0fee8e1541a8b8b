#!/usr/bin/env bash
# Checks vitq's deployment paths against vitq's own fake-quant simulation on the shared DeiT-Tiny and all of
# val1000, and writes bench/results/export_ort_deit_tiny.md. Per plan (W8A8; 32 calib1000 images, seed 0):
#   - ONNX Runtime on the exported QDQ file: its top-1, top-1 agreement with vitq's fake-quant, max logit diff;
#   - vitq's int8 runtime (`--runtime int8`): the same;
#   - the yardstick: vitq's fake-quant model against itself with every float constant perturbed by 1e-6
#     (`--perturb 1e-6`), i.e. what float noise alone does to this quantized network;
#   - the exported file's size against the shared FP32 model.onnx.
# About 4 minutes per plan on 2 cores (liu2021's and ptq4vit's searches add a few minutes).
# (liu2021+paper: these tables were measured when `liu2021` was the published method, before issue 11 made vitq's
# KL check and kind-wise mixed precision its default; their rows named liu2021 are what liu2021+paper is now.)
set -euo pipefail
cd "$(dirname "$0")/.."
VITQ=${VITQ:-./build/vitq}
MODEL=../shared/models/deit_tiny_patch16_224
DATA=../shared/data/imagenet
OUT=${OUT:-bench/results/export_ort_deit_tiny.md}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fp_size=$(stat -c %s "$MODEL/model.onnx")
field() { sed -n "$2" <<<"$1"; }
rows=""
for spec in "minmax:common" "liu2021+paper:common" "ptq4vit:paper" "fqvit:common" "fqvit:paper"; do
  method=${spec%%:*}
  convention=${spec##*:}
  name="$method-$convention"
  "$VITQ" quantize "$MODEL" --method "$method" --convention "$convention" --wbits 8 --abits 8 --calib "$DATA/calib1000" \
    --calib-size 32 --seed 0 --threads 2 --quiet --out "$WORK/$name.json" >/dev/null
  common=(--plan "$WORK/$name.json" --data "$DATA/val1000" --threads 2 --quiet)
  ort="—"; ort_agree="—"; ort_diff="—"; pct="—"; ort_delta="—"
  if "$VITQ" export "$MODEL" --plan "$WORK/$name.json" --out "$WORK/$name.onnx" >"$WORK/export.log" 2>&1; then
    log=$("$VITQ" eval "$MODEL" "${common[@]}" --runtime ort --onnx "$WORK/$name.onnx")
    echo "$log" | sed "s/^/$name ort: /"
    ort=$(field "$log" 's/^top-1 *\([0-9.]*\)%.*/\1/p')
    ort_agree=$(field "$log" 's/^vs vitq .*agreement \([0-9.]*\)%.*/\1/p')
    ort_diff=$(field "$log" 's/^vs vitq .*difference| \([0-9.e+-]*\).*/\1/p')
    pct=$(awk -v a="$(stat -c %s "$WORK/$name.onnx")" -v b="$fp_size" 'BEGIN { printf "%.1f", 100 * a / b }')
  else
    echo "$name: export refused: $(cat "$WORK/export.log")"
    ort="refused (integer ops)"
  fi
  log=$("$VITQ" eval "$MODEL" "${common[@]}" --runtime int8)
  echo "$log" | sed "s/^/$name int8: /"
  int8=$(field "$log" 's/^top-1 *\([0-9.]*\)%.*/\1/p')
  int8_agree=$(field "$log" 's/^vs vitq .*agreement \([0-9.]*\)%.*/\1/p')
  int8_diff=$(field "$log" 's/^vs vitq .*difference| \([0-9.e+-]*\).*/\1/p')
  vitq_top1=$(field "$log" 's/^vs vitq .*its top-1 \([0-9.]*\)%.*/\1/p')
  fp_top1=$(field "$log" 's/^top-1 .* vs FP32 \([0-9.]*\)%.*/\1/p')
  log=$("$VITQ" eval "$MODEL" "${common[@]}" --perturb 1e-6)
  echo "$log" | sed "s/^/$name perturbed: /"
  noise_agree=$(field "$log" 's/^vs vitq .*agreement \([0-9.]*\)%.*/\1/p')
  noise_diff=$(field "$log" 's/^vs vitq .*difference| \([0-9.e+-]*\).*/\1/p')
  rows+="| $method ($convention) | $fp_top1 | $vitq_top1 | $ort | $ort_agree | $ort_diff | $int8 | $int8_agree | $int8_diff | $noise_agree | $noise_diff | $pct |"$'\n'
done
ort_version=$("$VITQ" eval "$MODEL" --runtime ort --data "$DATA/val1000" --limit 1 --quiet | sed -n 's/^runtime *onnxruntime \([0-9.]*\).*/\1/p')
{
  echo "# vitq's deployment paths against its simulation — DeiT-Tiny, val1000 (1000 images)"
  echo
  echo "Reproduce: \`bash scripts/check_export.sh\` ($(date -u +%Y-%m-%d), onnxruntime $ort_version with its default optimisations,"
  echo "2 threads). Plans: W8A8, 32 calib1000 images drawn with seed 0. Agreement = top-1 agreement with vitq's fake-quant"
  echo "model on the same images; max diff = largest |logit difference| over all images and classes. The last two"
  echo "columns before the size are the yardstick: the fake-quant model against itself with every float constant"
  echo "perturbed by 1e-6 (relative), i.e. what float rounding alone does to a quantized network, whose codes flip"
  echo "at rounding boundaries."
  echo
  echo "| plan | FP32 top-1 | fake-quant top-1 | ORT top-1 | ORT agreement (%) | ORT max diff | int8 runtime top-1 | int8 agreement (%) | int8 max diff | 1e-6 noise agreement (%) | 1e-6 noise max diff | QDQ file (% of model.onnx) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf "%s" "$rows"
} > "$OUT"
cat "$OUT"
