# Sourced by the diagnostic scripts. eval_measures VITQ MODEL PLAN DATA [THREADS]: evaluates PLAN on DATA against
# FP32 and prints "top1 delta agreement kl" (e.g. "60.50 -20.40 66.40 0.9440"), or fails naming the plan.
eval_measures() {
  local vitq=$1 model=$2 plan=$3 data=$4 threads=${5:-2} log top1 delta agree kl
  log=$("$vitq" eval "$model" --plan "$plan" --data "$data" --threads "$threads" --quiet) || return 1
  top1=$(echo "$log" | sed -n 's/^top-1 *\([0-9.]*\)% (\([-+0-9.]*\) vs.*/\1/p')
  delta=$(echo "$log" | sed -n 's/^top-1 *[0-9.]*% (\([-+0-9.]*\) vs.*/\1/p')
  agree=$(echo "$log" | sed -n 's/^agreement *\([0-9.]*\)%.*/\1/p')
  kl=$(echo "$log" | sed -n 's/^KL *\([0-9.]*\) .*/\1/p')
  if [ -z "$top1" ] || [ -z "$agree" ] || [ -z "$kl" ]; then
    echo "eval_measures: could not read the evaluation of $plan" >&2
    return 1
  fi
  echo "$top1 $delta $agree $kl"
}
