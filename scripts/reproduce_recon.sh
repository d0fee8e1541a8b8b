#!/usr/bin/env bash
# Reproduces the reconstruction comparison in bench/results/ on the shared DeiT-Tiny: 32 calib1000 images drawn
# with seed 0, all of val1000, 2 threads, the common convention, default reconstruction options (300 Adam steps
# per block, batch 8, QDrop 0.5, Fisher-weighted loss). About 12 minutes per row on 2 cores.
#   compare_deit_tiny_recon.md    qhyvit, ptq4vit+recon, liu2021+recon at W4A4
#   compare_deit_tiny_qhyvit.md   qhyvit at W8A8 and W6A6
# ptq4vit, liu2021 and minmax without reconstruction are in compare_deit_tiny_common.md / compare_deit_tiny.md
# (same images, seed and convention).
# (liu2021+paper: these tables were measured when `liu2021` was the published method, before issue 11 made vitq's
# KL check and kind-wise mixed precision its default; their rows named liu2021 are what liu2021+paper is now.)
set -euo pipefail
cd "$(dirname "$0")/.."
VITQ=${VITQ:-./build/vitq}
MODEL=../shared/models/deit_tiny_patch16_224
DATA=../shared/data/imagenet
COMMON=(--calib "$DATA/calib1000" --calib-size 32 --seed 0 --data "$DATA/val1000" --threads 2 --convention common)
if [ "${1:-}" != "--qhyvit-only" ]; then
  "$VITQ" compare "$MODEL" "${COMMON[@]}" --methods qhyvit,ptq4vit+recon,liu2021+paper+recon --bits w4a4 \
    --out bench/results/compare_deit_tiny_recon
fi
"$VITQ" compare "$MODEL" "${COMMON[@]}" --methods qhyvit --bits w8a8,w6a6 --out bench/results/compare_deit_tiny_qhyvit
