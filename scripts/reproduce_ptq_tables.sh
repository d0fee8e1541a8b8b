#!/usr/bin/env bash
# Reproduces the PTQ results tables in bench/results/ on the shared DeiT-Tiny: 32 calib1000 images drawn with
# seed 0, evaluated on all of val1000, 2 threads. About 45 minutes on 2 cores.
#   ptq_deit_tiny.md           minmax, percentile, omse, liu2021 x W8A8, W6A6, W4A8, W4A4
#   ptq_deit_tiny_ablation.md  liu2021 without the ranking loss, without bias correction, with cosine instead of
#                              Pearson, and with mixed precision at a 6-bit (resp. 4-bit) average
# (liu2021+paper: these tables were measured when `liu2021` was the published method, before issue 11 made vitq's
# KL check and kind-wise mixed precision its default; their rows named liu2021 are what liu2021+paper is now.)
set -euo pipefail
cd "$(dirname "$0")/.."
VITQ=${VITQ:-./build/vitq}
MODEL=../shared/models/deit_tiny_patch16_224
DATA=../shared/data/imagenet
COMMON=(--calib "$DATA/calib1000" --calib-size 32 --seed 0 --data "$DATA/val1000" --threads 2)
"$VITQ" compare "$MODEL" "${COMMON[@]}" --methods minmax,percentile,omse,liu2021+paper --bits w8a8,w6a6,w4a8,w4a4 \
  --out bench/results/ptq_deit_tiny
"$VITQ" compare "$MODEL" "${COMMON[@]}" --methods liu2021+paper,liu2021+paper+norank,liu2021+paper+nobc,liu2021+paper+cosine,liu2021+paper+mp \
  --bits w6a6,w4a4 --out bench/results/ptq_deit_tiny_ablation
