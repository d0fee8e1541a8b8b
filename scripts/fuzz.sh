#!/usr/bin/env bash
# Runs the libFuzzer targets of fuzz/ (built in build-asan/ with ASan+UBSan, see fuzz/README.md).
#   scripts/fuzz.sh [SECONDS] [TARGET...]   each target for SECONDS (default 30), one after the other, from the
#                                           corpus in fuzz/corpus/<target> (made by fuzz/make_corpus.sh);
#                                           a summary line per target; exit 1 if any target found a crash,
#                                           sanitizer report, leak, timeout or out-of-memory. Its input is in
#                                           fuzz/crashes/<target>/ (FUZZ_CRASH_DIR), its log in
#                                           build-asan/fuzz-logs/<target>.log.
#   scripts/fuzz.sh --regressions [TARGET...]  replays every file in fuzz/regressions/<target>/ once; exit 1 if
#                                           any still fails.
# Targets: safetensors config image labels plan onnx (onnx only when built with the ONNX front end).
# FUZZ_KEEP_GOING=1: go on after a finding (libFuzzer -fork=1 -ignore_crashes/timeouts/ooms), for long runs.
# FUZZ_NO_BUILD=1: use the fuzz targets already in build-asan/fuzz as they are.
# FUZZ_SEED=N: libFuzzer's -seed (default 1, so that CI's smoke run mutates the same way every time; 0 = random).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/sanitizers.sh

REGRESSIONS=0
if [ "${1:-}" = "--regressions" ]; then REGRESSIONS=1; shift; fi
SECS=30
if [ "$REGRESSIONS" = 0 ] && [[ "${1:-}" =~ ^[0-9]+$ ]]; then SECS=$1; shift; fi
ALL=(safetensors config image labels plan onnx)
TARGETS=("$@")
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=("${ALL[@]}")
CRASH_DIR=${FUZZ_CRASH_DIR:-fuzz/crashes}
LOG_DIR=$ASAN_BUILD_DIR/fuzz-logs

# per target: -max_len (bytes), -timeout (seconds per input), a dictionary for the JSON ones
opts() {
  case $1 in
    safetensors) echo "-max_len=65536 -timeout=10 -dict=fuzz/json.dict" ;;
    config) echo "-max_len=4096 -timeout=30 -dict=fuzz/json.dict" ;;
    image) echo "-max_len=65536 -timeout=10" ;;
    labels) echo "-max_len=8192 -timeout=10" ;;
    plan) echo "-max_len=65536 -timeout=20 -dict=fuzz/json.dict" ;;
    onnx) echo "-max_len=16384 -timeout=20" ;;
    *) echo "fuzz: unknown target '$1' (${ALL[*]})" >&2; exit 2 ;;
  esac
}
for t in "${TARGETS[@]}"; do opts "$t" >/dev/null; done

if [ "${FUZZ_NO_BUILD:-0}" != 1 ]; then
  build_asan $(for t in "${TARGETS[@]}"; do echo "fuzz_$t"; done) 2>&1 | grep -v '^ninja: no work to do' || true
fi
for t in "${TARGETS[@]}"; do
  [ -x "$ASAN_BUILD_DIR/fuzz/fuzz_$t" ] || { echo "fuzz: $ASAN_BUILD_DIR/fuzz/fuzz_$t was not built" >&2; exit 1; }
done
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE

failed=0
if [ "$REGRESSIONS" = 1 ]; then
  for t in "${TARGETS[@]}"; do
    dir=fuzz/regressions/$t
    [ -d "$dir" ] || continue
    for f in "$dir"/*; do
      [ -f "$f" ] || continue
      if nice -n 10 "$ASAN_BUILD_DIR/fuzz/fuzz_$t" $(opts "$t") -rss_limit_mb=2048 "$f" >"$ASAN_BUILD_DIR/replay.log" 2>&1; then
        echo "regression $t $(basename "$f"): ok"
      else
        echo "regression $t $(basename "$f"): FAILS"
        grep -m3 -E "ERROR: |runtime error|SUMMARY" "$ASAN_BUILD_DIR/replay.log" | sed 's/^/    /' || true
        failed=1
      fi
    done
  done
  exit $failed
fi

[ -d fuzz/corpus/safetensors ] || bash fuzz/make_corpus.sh >/dev/null
mkdir -p "$LOG_DIR"
extra=()
if [ "${FUZZ_KEEP_GOING:-0}" = 1 ]; then extra=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1); fi
for t in "${TARGETS[@]}"; do
  mkdir -p "$CRASH_DIR/$t" "fuzz/corpus/$t"
  log=$LOG_DIR/$t.log
  before=$(ls "$CRASH_DIR/$t" | sort)
  rc=0
  nice -n 10 "$ASAN_BUILD_DIR/fuzz/fuzz_$t" "fuzz/corpus/$t" $(opts "$t") -rss_limit_mb=2048 -seed="${FUZZ_SEED:-1}" \
    -max_total_time="$SECS" -print_final_stats=1 -artifact_prefix="$CRASH_DIR/$t/" "${extra[@]}" >"$log" 2>&1 || rc=$?
  runs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || true)
  [ -n "$runs" ] || runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
  found=$(comm -13 <(echo "$before") <(ls "$CRASH_DIR/$t" | sort) | grep -v '^slow-unit-' | sed "s|^|$CRASH_DIR/$t/|" | tr '\n' ' ' || true)
  if [ "$rc" = 0 ] && [ -z "$found" ]; then
    result=ok
  else
    result="FINDING (exit $rc): ${found:-see $log}"
    failed=1
  fi
  printf 'fuzz %-12s %5ss  runs %-9s %-22s %s\n' "$t" "$SECS" "${runs:-?}" "${cov:-cov: ?}" "$result"
done
exit $failed
