#!/usr/bin/env bash
# Reproduces the method comparison in bench/results/ on the shared DeiT-Tiny: 32 calib1000 images drawn with
# seed 0, evaluated on all of val1000, 2 threads. About an hour and a half on 2 cores.
#   compare_deit_tiny.md         minmax, easyquant, fqvit (8/8/4 at W8A8), ptq4vit, liu2021 x W8A8, W6A6, W4A4
#   compare_deit_tiny_fqvit8.md  fqvit with 8-bit uniform softmax codes (the paper's 8/8/8 preset)
#   compare_deit_tiny_common.md  minmax, easyquant, fqvit, ptq4vit under one shared convention (--convention
#                                common; liu2021 uses that placement under both, so it is not repeated)
# (liu2021+paper: these tables were measured when `liu2021` was the published method, before issue 11 made vitq's
# KL check and kind-wise mixed precision its default; their rows named liu2021 are what liu2021+paper is now.)
set -euo pipefail
cd "$(dirname "$0")/.."
VITQ=${VITQ:-./build/vitq}
MODEL=../shared/models/deit_tiny_patch16_224
DATA=../shared/data/imagenet
COMMON=(--calib "$DATA/calib1000" --calib-size 32 --seed 0 --data "$DATA/val1000" --threads 2)
"$VITQ" compare "$MODEL" "${COMMON[@]}" --methods minmax,easyquant,fqvit,ptq4vit,liu2021+paper --bits w8a8,w6a6,w4a4 \
  --out bench/results/compare_deit_tiny
"$VITQ" compare "$MODEL" "${COMMON[@]}" --methods fqvit+attn8 --bits w8a8 --out bench/results/compare_deit_tiny_fqvit8
"$VITQ" compare "$MODEL" "${COMMON[@]}" --convention common --methods minmax,easyquant,fqvit,ptq4vit \
  --bits w8a8,w6a6,w4a4 --out bench/results/compare_deit_tiny_common
