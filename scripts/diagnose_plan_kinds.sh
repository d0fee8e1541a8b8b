#!/usr/bin/env bash
# Where a finished plan's loss is, by kind of quantizer: the plan on DATA, then the same plan with one kind of
# quantizer left out (in all 12 blocks of the shared DeiT-Tiny: those inputs or weights run in FP32, everything else,
# learned roundings and folded weights included, as the plan says). A kind whose removal recovers most of the
# agreement and KL is where the loss is. Unlike diagnose_layer_kinds.sh it does not quantize again, so it reads
# plans that took an hour of reconstruction; it measures what the rest of the plan loses with that kind exact, not
# what a new calibration would reach without it. On a reconstructed plan that is a different question: the learned
# roundings and steps compensate each quantizer with the others, so leaving one kind out can lose accuracy (the
# W3A3 plan of bench/results/diagnose_plan_kinds_w3a3_tokens_20261206.md: every weight left out, 11 points of
# agreement lost). Compare each row with the plan under 1e-6 float noise (vitq eval --perturb 1e-6) before reading
# a gain into it.
#   usage: scripts/diagnose_plan_kinds.sh PLAN [DATA]   (needs jq; writes bench/results/diagnose_plan_kinds_<PLAN's name>.md,
#          or OUT=FILE)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/eval_measures.sh
PLAN=${1:?usage: scripts/diagnose_plan_kinds.sh PLAN [DATA]}
DATA=${2:-../shared/data/imagenet/val1000}
VITQ=${VITQ:-./build/vitq}
MODEL=../shared/models/deit_tiny_patch16_224
NAME=$(basename "$PLAN" .json); NAME=${NAME%.plan}
OUT=${OUT:-bench/results/diagnose_plan_kinds_${NAME//+/_}.md}
command -v jq > /dev/null || { echo "diagnose_plan_kinds.sh: needs jq (apt-get install jq)" >&2; exit 1; }
for f in "$PLAN" "$MODEL/model.safetensors" "$DATA"; do
  [ -e "$f" ] || { echo "diagnose_plan_kinds.sh: missing $f" >&2; exit 1; }
done
jq -e '.points | length > 0' "$PLAN" > /dev/null 2>&1 || { echo "diagnose_plan_kinds.sh: $PLAN is not a plan with quantizers" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
: > "$TMP/rows"
row() {  # label, jq condition on a point (.node, .slot, .weight) selecting the quantizers to leave out
  local label=$1 cond=$2 n m top1 delta agree kl
  n=$(jq "[.points[] | select($cond)] | length" "$PLAN")
  [ "$n" -gt 0 ] || [ "$cond" = false ] || { echo "diagnose_plan_kinds.sh: no quantizer of the plan is '$label'" >&2; exit 1; }
  jq "del(.points[] | select($cond))" "$PLAN" > "$TMP/plan.json"
  m=$(eval_measures "$VITQ" "$MODEL" "$TMP/plan.json" "$DATA") || { echo "diagnose_plan_kinds.sh: could not evaluate '$label'" >&2; exit 1; }
  read -r top1 delta agree kl <<< "$m"
  echo "| $label | $n | $top1 | $delta | $agree% | $kl |" >> "$TMP/rows"
  echo "$label ($n left out): $top1 ($delta) / $agree% / $kl" >&2
}
act() { echo "(.weight | not) and (.node | test(\"^blocks\\\\.[0-9]+\\\\.$1$\"))${2:+ and .slot == $2}"; }
row "the plan" false
row "qkv inputs (post-LayerNorm)" "$(act 'attn\\.qkv')"
row "q and k (the q·kᵀ operands)" "$(act 'attn\\.matmul_qk')"
row "attention probabilities (post-softmax)" "$(act 'attn\\.matmul_av' 0)"
row "v" "$(act 'attn\\.matmul_av' 1)"
row "attn.proj inputs" "$(act 'attn\\.proj')"
row "fc1 inputs (post-LayerNorm)" "$(act 'mlp\\.fc1')"
row "fc2 inputs (post-GELU)" "$(act 'mlp\\.fc2')"
row "every block weight" '.weight and (.node | startswith("blocks."))'
row "patch embedding and head (inputs and weights)" '.node | test("^(patch_embed|head)")'
{
  echo "# Where the loss of $NAME is, by kind of quantizer"
  echo
  echo "Plan \`$PLAN\` ($(jq -r '.method' "$PLAN")) on deit_tiny_patch16_224, evaluated on \`$DATA\`; each row but the first leaves one"
  echo "kind of quantizer out (those inputs or weights in FP32, the rest of the plan unchanged). Agreement and KL against FP32."
  echo "Reproduce: \`scripts/diagnose_plan_kinds.sh $PLAN $DATA\` ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))."
  echo
  echo "| left in FP32 | quantizers | top-1 | Δ vs FP32 | agreement | KL(FP‖Q) |"
  echo "|---|---|---|---|---|---|"
  cat "$TMP/rows"
} > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "wrote $OUT"
