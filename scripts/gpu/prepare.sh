#!/usr/bin/env bash
# Packs what scripts/gpu/check.sh needs on a GPU machine that reaches no network and does not see ../shared:
# .gpu/ (git-ignored through .git/info/exclude) with Debian 12's packages of vitq's small dependencies (unpacked
# there into a private prefix, never into /), the DeiT-Tiny weights and golden logits, the 128 calib1000 images
# that --calib-size 128 --seed 0 draws (ordered so that the same draw over the subset gives them in the same
# order), and the first 100 val1000 images. About 41 MB; the device tool carries it with carry: [".gpu"], which
# with the tracked tree must stay under 64 MiB. For scripts/gpu/recon.sh: CALIB_N=300 (images drawn), NO_VAL=1 (no
# val100: check.sh then fails its evaluations), PLANS="a.json b.json" (start plans, copied into .gpu/plans).
# More images than one call can carry (CALIB_N up to all 1000): the images that do not fit beside the rest go into
# .gpu_part2, .gpu_part3, ..., each below the limit with the tree; a warm device machine keeps .gpu and the build
# between calls, so call 1 carries .gpu, call k carries .gpu_partk, and each runs the same recon.sh, which moves a
# part's images into .gpu/calib and starts the runs once every image is there (it says how many are missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
S=${VITQ_SHARED:-../shared}
N=${CALIB_N:-128}
mkdir -p .git/info
for x in '/.gpu/' '/.gpu_part*/'; do grep -qxF "$x" .git/info/exclude 2>/dev/null || echo "$x" >> .git/info/exclude; done
rm -rf .gpu .gpu_part* && mkdir -p .gpu/debs .gpu/deit/golden .gpu/calib .gpu/val100
(cd .gpu/debs && apt-get download -q libfmt-dev libfmt9 nlohmann-json3-dev libcli11-dev libjpeg62-turbo-dev \
  libjpeg62-turbo libpng-dev libpng16-16 zlib1g-dev zlib1g 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
cp "$S"/models/deit_tiny_patch16_224/{config.json,model.safetensors} .gpu/deit/
cp "$S"/models/deit_tiny_patch16_224/golden/val1000_first100_logits.npy .gpu/deit/golden/
g++ -O2 -std=c++17 -o /tmp/vitq_calib_order scripts/gpu/calib_order.cpp
/tmp/vitq_calib_order "$S/data/imagenet/calib1000/labels.txt" "$N" > .gpu/calib/labels.txt
if [ -z "${NO_VAL:-}" ]; then  # recon.sh evaluates nothing there: NO_VAL=1 leaves room for calibration images
  grep -v '^#' "$S/data/imagenet/val1000/labels.txt" | head -100 > .gpu/val100/labels.txt
  while read -r f _; do cp "$S/data/imagenet/val1000/$f" .gpu/val100/; done < .gpu/val100/labels.txt
fi
if [ -n "${PLANS:-}" ]; then  # start plans for recon.sh, calibrated here
  mkdir -p .gpu/plans
  for p in $PLANS; do cp "$p" .gpu/plans/; done
fi
# What travels with each call besides the carried folder: the tracked and untracked-not-ignored files.
TREE=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s | awk '{s += $1} END {print s + 0}')
CAP=$((64 * 1024 * 1024 - TREE - ${MARGIN_MB:-2} * 1024 * 1024))
used=$(du -sb .gpu | cut -f1)
part=1 dir=.gpu/calib
while read -r f _; do
  sz=$(stat -c %s "$S/data/imagenet/calib1000/$f")
  if [ $((used + sz)) -gt "$CAP" ]; then  # this call is full: the next part
    part=$((part + 1)) dir=.gpu_part$part/calib used=0
    mkdir -p "$dir"
  fi
  cp "$S/data/imagenet/calib1000/$f" "$dir/"
  used=$((used + sz))
done < .gpu/calib/labels.txt
du -sh .gpu .gpu_part* 2>/dev/null
if [ "$part" -gt 1 ]; then
  echo "$N images in $part calls: carry .gpu in the first, then .gpu_part2 ... .gpu_part$part, one a call, each" \
    "running the same recon.sh on the warm machine (30 s idle gives it back)"
fi
