#!/usr/bin/env bash
# A vitq compare sweep as a Slurm job array: task I of N runs shard I/N of the (bits, method) cells and writes
# its partial result to the shared filesystem; a dependent job merges them into one table.
#
#   sbatch --array=0-3 deploy/slurm_compare.sh            # 4 shards
#   sbatch --dependency=afterok:<array job id> --wrap \
#     "vitq compare --merge $SWEEP_DIR/part_*.json --out $SWEEP_DIR/compare"
#
# Every task must see the same model, images and vitq build (a shared filesystem); a shard that fails can be
# rerun alone (sbatch --array=2 ...): its partial result is replaced atomically.
#SBATCH --job-name=vitq-compare
#SBATCH --cpus-per-task=8
#SBATCH --mem=24G
#SBATCH --time=04:00:00
#SBATCH --output=vitq-compare-%A_%a.log
set -euo pipefail
: "${SLURM_ARRAY_TASK_ID:?run as a job array: sbatch --array=0-<N-1>}"
: "${SLURM_ARRAY_TASK_COUNT:?run as a job array: sbatch --array=0-<N-1>}"
VITQ=${VITQ:-vitq}
MODEL=${MODEL:-/shared/models/deit_tiny_patch16_224}
CALIB=${CALIB:-/shared/data/imagenet/calib1000}
DATA=${DATA:-/shared/data/imagenet/val1000}
SWEEP_DIR=${SWEEP_DIR:-/shared/sweeps/deit_tiny}
METHODS=${METHODS:-minmax,easyquant,fqvit,ptq4vit,liu2021}
BITS=${BITS:-w8a8,w6a6,w4a4}
EXTRA=${EXTRA:-}  # more compare options, the same in every task (e.g. "--calib-size 128 --convention common")
mkdir -p "$SWEEP_DIR"
# The same command in every task but for --shard and --out: that is what makes the partial results one sweep.
"$VITQ" compare "$MODEL" --calib "$CALIB" --data "$DATA" --methods "$METHODS" --bits "$BITS" \
  --threads "${SLURM_CPUS_PER_TASK:-0}" --quiet $EXTRA \
  --shard "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT" --out "$SWEEP_DIR/part_$SLURM_ARRAY_TASK_ID"
