#!/usr/bin/env bash
# Where a uniform plan's loss comes from, by kind of layer: the method at WBITS/ABITS, then the same with one
# kind of layer (the same layer in all 12 blocks of the shared DeiT-Tiny; weights and inputs) raised to 8 bits,
# each evaluated on val1000. A kind whose raise recovers most of the agreement and KL is where the loss is.
# 32 calib1000 images, seed 0, 2 threads. Writes bench/results/diagnose_layer_kinds_<method>_w<W>a<A>.md.
#   usage: scripts/diagnose_layer_kinds.sh [METHOD] [WBITS] [ABITS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/eval_measures.sh
METHOD=${1:-liu2021}; WBITS=${2:-6}; ABITS=${3:-6}
VITQ=${VITQ:-./build/vitq}
MODEL=../shared/models/deit_tiny_patch16_224
CALIB=../shared/data/imagenet/calib1000
DATA=../shared/data/imagenet/val1000
OUT=bench/results/diagnose_layer_kinds_${METHOD//+/_}_w${WBITS}a${ABITS}.md
for f in "$MODEL/model.safetensors" "$CALIB" "$DATA"; do
  [ -e "$f" ] || { echo "diagnose_layer_kinds.sh: missing $f (is ../shared beside the repository?)" >&2; exit 1; }
done
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# NAME=8 for the given layers of blocks 0..11
raise() {
  local s=""
  for i in $(seq 0 11); do for l in "$@"; do s="$s,blocks.$i.$l=8"; done; done
  echo "${s#,}"
}
row() {  # label, then extra quantize options
  local label=$1; shift
  "$VITQ" quantize "$MODEL" --method "$METHOD" --wbits "$WBITS" --abits "$ABITS" --calib "$CALIB" --calib-size 32 \
    --seed 0 --threads 2 --quiet --out "$TMP/plan.json" "$@" > /dev/null
  local m top1 delta agree kl
  m=$(eval_measures "$VITQ" "$MODEL" "$TMP/plan.json" "$DATA") || { echo "diagnose_layer_kinds.sh: could not evaluate '$label'" >&2; exit 1; }
  read -r top1 delta agree kl <<< "$m"
  echo "| $label | $top1 | $delta | $agree% | $kl |" >> "$TMP/rows"
  echo "$label: $top1 ($delta) / $agree% / $kl" >&2
}
: > "$TMP/rows"
row "uniform W${WBITS}A${ABITS}"
row "attn.qkv + mlp.fc1 at 8 (post-LayerNorm inputs)" --layer-bits "$(raise attn.qkv mlp.fc1)"
row "attn.matmul_qk + attn.matmul_av at 8" --layer-bits "$(raise attn.matmul_qk attn.matmul_av)"
row "attn.proj at 8" --layer-bits "$(raise attn.proj)"
row "mlp.fc2 at 8 (post-GELU input)" --layer-bits "$(raise mlp.fc2)"
{
  echo "# $METHOD W${WBITS}A${ABITS} on deit_tiny_patch16_224: the loss by kind of layer"
  echo
  echo "Each row but the first raises one kind of layer (in all 12 blocks, weights and inputs) to 8 bits; the rest stay"
  echo "at W${WBITS}A${ABITS}. Calibration: 32 calib1000 images, seed 0; evaluation: val1000; agreement and KL against FP32."
  echo "Reproduce: \`scripts/diagnose_layer_kinds.sh $METHOD $WBITS $ABITS\` ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))."
  echo
  echo "| plan | top-1 | Δ vs FP32 | agreement | KL(FP‖Q) |"
  echo "|---|---|---|---|---|"
  cat "$TMP/rows"
} > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "wrote $OUT"
