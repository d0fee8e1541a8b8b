#!/usr/bin/env bash
# The report of the committed DeiT-Tiny compare (bench/results/compare_deit_tiny.json) with the per-layer charts
# of a PTQ4ViT W4A4 plan (32 calib1000 images, seed 0: the compare's settings), and its screenshot in Chromium:
#   bench/results/report_deit_tiny.html, docs/report.png
# Needs a build (scripts/build.sh) and chromium (scripts/setup.sh). About 4 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
MODEL="$SHARED/models/deit_tiny_patch16_224"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
./build/vitq quantize "$MODEL" --method ptq4vit --wbits 4 --abits 4 --calib "$SHARED/data/imagenet/calib1000" \
  --calib-size 32 --seed 0 --quiet --out "$tmp/ptq4vit_w4a4.json"
./build/vitq report "$MODEL" --plan "$tmp/ptq4vit_w4a4.json" --data "$SHARED/data/imagenet/val1000" --images 32 \
  --compare bench/results/compare_deit_tiny.json --out bench/results/report_deit_tiny.html
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$tmp/profile" \
  --window-size=1280,${HEIGHT:-3500} --screenshot="$PWD/docs/report.png" "file://$PWD/bench/results/report_deit_tiny.html" 2>/dev/null
echo "wrote bench/results/report_deit_tiny.html and docs/report.png"
