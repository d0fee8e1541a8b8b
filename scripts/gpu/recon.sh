#!/usr/bin/env bash
# Block reconstruction on a GPU machine, starting from plans calibrated on the CPU here (the RepQ-ViT/AdaLog
# search barely uses threads and would cost the GPU lease as much as the reconstruction), several runs at once
# (a step is bound by launching kernels from one CPU thread: two runs at once each ran about 1.4x slower a step
# than alone, so together they did about 1.4x the work; bench/results/gpu_h200_recon.md).
#
# Here:   vitq quantize ../shared/models/deit_tiny_patch16_224 --method repqvit+adalog+headwise+wmse --wbits 3 --abits 3 \
#           --calib ../shared/data/imagenet/calib1000 --calib-size 128 --seed 0 --out w3a3_start.json   (likewise W4A4)
#         CALIB_N=300 NO_VAL=1 PLANS="w3a3_start.json w4a4_start.json" bash scripts/gpu/prepare.sh
# There:  OUT=<dir> BUDGET=<s> bash scripts/gpu/recon.sh      (.gpu carried)
#         With more images than one call carries (CALIB_N=1000: .gpu, .gpu_part2, .gpu_part3), the same command once a
#         part, on the warm machine: carry .gpu, then .gpu_part2, ...; each call moves its images into .gpu/calib (the
#         first also builds), and the one that completes them runs the jobs.
#
# JOBS: one run a line, "NAME PLAN IMAGES ITERS BATCH [more vitq quantize options]"; PLAN is a file in .gpu/plans,
# IMAGES the first that many of the calibration images (the seeded draw of all of them: the first 128 are the ones
# `--calib-size 128 --seed 0` draws from calib1000, the start plans' calibration images). Each run gets the time
# left less 20 s; a run not done by then is stopped and its plan is missing. The plans come back in
# $OUT/plans.tar.gz, every run's output in $OUT/log.txt, a digest in $OUT/summary.md.
cd "$(dirname "$0")/../.."
if [ ! -f .gpu/calib/labels.txt ]; then  # before the build: lib.sh needs .gpu/debs too
  echo "recon.sh: no .gpu/calib/labels.txt on this machine: carry .gpu (scripts/gpu/prepare.sh) in the first call of a" \
    "fresh machine; the .gpu_partK folders only add images to it" >&2
  exit 1
fi
source scripts/gpu/lib.sh
M=.gpu/deit
CAL=.gpu/calib
NCAL=$(grep -cv '^#' "$CAL/labels.txt")
# More images than one call carries (prepare.sh): each call moves the images of the parts it brought into .gpu/calib,
# which a warm machine keeps between calls; the runs start once every image of labels.txt is there.
for p in .gpu_part*/calib; do
  [ -d "$p" ] || continue
  n=$(find "$p" -maxdepth 1 -type f | wc -l)
  find "$p" -maxdepth 1 -type f -exec mv -f {} "$CAL/" \;
  say "moved $n images of $p into $CAL"
done
missing=0
while read -r f _; do [ -f "$CAL/$f" ] || missing=$((missing + 1)); done < <(grep -v '^#' "$CAL/labels.txt")
if [ "$missing" -gt 0 ]; then
  say "$((NCAL - missing)) of the $NCAL calibration images are here, $missing missing: call again, carrying the next" \
    ".gpu_partK folder, within the machine's 30 s of idle time (built in $(elapsed) s)"
  exit 0
fi
JOBS=${JOBS:-"w3a3_n${NCAL}_b32_i1500 w3a3_start.json $NCAL 1500 32
w4a4_n${NCAL}_b32_i1000 w4a4_start.json $NCAL 1000 32"}
NJ=$(echo "$JOBS" | grep -c .)
TH=$((NT / NJ > 0 ? NT / NJ : 1))
LIMIT=$(($(left) - 20))
if [ "$LIMIT" -lt 60 ]; then say "no time left for a reconstruction ($LIMIT s; BUDGET=$BUDGET)"; exit 1; fi
say ""
say "### $NJ reconstruction runs at once ($NCAL calibration images packed, $TH threads each, ${LIMIT} s each at most, from $(elapsed) s)"
pids=()
names=()
while read -r name plan images iters batch extra; do
  [ -z "$name" ] && continue
  # shellcheck disable=SC2086  # extra: more options, split on purpose
  cmd=("$V" quantize "$M" --start-plan ".gpu/plans/$plan" --reconstruct block --calib "$CAL" --calib-size "$NCAL" --seed 0
    --recon-images "$images" --recon-iters "$iters" --recon-batch "$batch" --device "${DEVICE:-cuda}" --threads "$TH" $extra
    --out "$TMP/plans/$name.json")
  say "- $name: \`${cmd[*]}\`"
  # each run's own end: the waits below return in the order the runs started
  (timeout "$LIMIT" "${cmd[@]}" >"$TMP/$name.out" 2>&1; echo "rc $?, done at $(elapsed) s" >"$TMP/$name.end") &
  pids+=($!)
  names+=("$name")
done <<<"$JOBS"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >"$TMP/smi.txt" 2>&1
(sleep 60 && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >>"$TMP/smi.txt" 2>&1) &
sampler=$!
ok=0
for k in "${!pids[@]}"; do
  wait "${pids[$k]}"
  name=${names[$k]}
  [ -s "$TMP/plans/$name.json" ] && ok=$((ok + 1))
  { echo "===== $name"; cat "$TMP/$name.out"; } >>"$LOG"
  say ""
  say "#### $name: $(cat "$TMP/$name.end" 2>/dev/null || echo 'no end recorded')"
  say '```'
  grep -E '^(recon |method |calib +[0-9]|search |wrote |warning|error)' "$TMP/$name.out" | tail -n 24 | tee -a "$SUM"
  say '```'
done
kill "$sampler" 2>/dev/null
say ""
say "GPU load, at the start and a minute in (utilisation, memory): $(tr '\n' ' ' <"$TMP/smi.txt")"
tar -C "$TMP/plans" -czf "$OUT/plans.tar.gz" .
say ""
say "done in $(elapsed) s: $ok of $NJ plans written"
[ "$ok" -gt 0 ]
