#!/usr/bin/env bash
# Checks that a change leaves the DeiT-Tiny plans of every method unchanged: builds BASE (a git revision) in a
# temporary worktree, writes each method's W6A6 plan (short searches: 6 calibration images, 2 scored, 8 grid
# points, 1 round) with the base and the current build, and compares them (the search time and the plan
# format version excepted).
# Usage: bash scripts/compare_plans.sh BASE_REV        (needs build/vitq and ../shared; about 4 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: compare_plans.sh BASE_REV}
ROOT=$(pwd)
WORK=$(mktemp -d)
trap 'git -C "$ROOT" worktree remove --force "$WORK/base" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
git worktree add -q "$WORK/base" "$BASE"
(cd "$WORK/base" && BUILD_DIR="$WORK/base/build" bash scripts/build.sh >/dev/null)
M=../shared/models/deit_tiny_patch16_224
C=../shared/data/imagenet/calib1000
status=0
for spec in minmax percentile omse liu2021 easyquant ptq4vit fqvit fqvit+attn8 "liu2021 --mixed-precision --avg-bits 6" \
            "ptq4vit --convention common"; do
  read -r -a args <<< "$spec"
  for which in base head; do
    bin=build/vitq
    [ "$which" = base ] && bin="$WORK/base/build/vitq"
    "$bin" quantize "$M" --method "${args[@]}" --wbits 6 --abits 6 --calib "$C" --calib-size 6 --search-images 2 \
      --search-steps 8 --rounds 1 --out "$WORK/$which.json" >"$WORK/$which.log" 2>&1 || { cat "$WORK/$which.log"; exit 1; }
    # the plan without its search time and format version (a new version reads the old ones)
    grep -v '"search_seconds"\|"version"' "$WORK/$which.json" > "$WORK/$which.cmp"
  done
  if cmp -s "$WORK/base.cmp" "$WORK/head.cmp"; then echo "identical  $spec"; else echo "DIFFERENT  $spec"; status=1; fi
done
exit $status
