#!/bin/bash
# Pre-training on a Slurm cluster: one task per GPU on every node, resumed from the run directory's latest
# checkpoint after a requeue. Run from the gptscale checkout (or set GPTSCALE_REPO):
#
#   sbatch slurm/pretrain.sh run.yaml [--train.lr=3e-4 ...]
#   sbatch --nodes=4 --time=48:00:00 --partition=gpu slurm/pretrain.sh run.yaml      # flags override the defaults
#   GPTSCALE_CONFIG=run.yaml GPTSCALE_ARGS="--train.max_steps=1000 --train.run_dir='runs/my run'" sbatch slurm/pretrain.sh
#   (GPTSCALE_ARGS is split by shell quoting rules, quotes removed; nothing in it is expanded or run)
#
# Change GPUs and tasks together (one task per GPU): sbatch --gpus-per-node=4 --ntasks-per-node=4 ...
# Before the time limit (and on `scancel --signal=USR2 JOBID`) the run checkpoints at the next step boundary
# and requeues itself; the requeued job continues exactly where it stopped. Environment: README.md, "Launching on a Slurm cluster".
#SBATCH --job-name=gptscale-pretrain
#SBATCH --nodes=1
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=USR2@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
[[ -f ${GPTSCALE_REPO:=${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh ]] || { echo "gptscale-slurm: error:" \
    "$GPTSCALE_REPO/slurm/common.sh not found: run sbatch from the gptscale checkout or set" \
    "GPTSCALE_REPO=/path/to/gptscale" >&2; exit 2; }
# shellcheck source=slurm/common.sh
source "$GPTSCALE_REPO/slurm/common.sh"  # sets -euo pipefail, defines gptscale_launch
gptscale_launch pretrain "$@"
