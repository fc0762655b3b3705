#!/bin/bash
# GPT-1 fine-tuning on a Slurm cluster: one task per GPU. Run from the gptscale checkout (or set GPTSCALE_REPO):
#
#   sbatch slurm/finetune.sh --task rte --init runs/my-run --data-dir ../shared/data [--finetune.lr=6.25e-5 ...]
#   sbatch slurm/finetune.sh ft.yaml --task sst2 --init runs/my-run/hf
#   sbatch --gpus-per-node=2 --ntasks-per-node=2 slurm/finetune.sh --task mrpc --init runs/my-run
#
# A fine-tune has no mid-run checkpoint: USR2 (time limit, or `scancel --batch --signal=USR2 JOBID`) reaches
# this batch shell, which requeues the job; the run then starts again from --init (at most
# GPTSCALE_MAX_RESTARTS=3 times). Sweeps: `python -m launcher finetune-grid` (a job array, one results table).
# Environment and common failures: README.md, "Launching on a Slurm cluster".
#SBATCH --job-name=gptscale-finetune
#SBATCH --nodes=1
#SBATCH --gpus-per-node=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR2@120
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
[[ -f ${GPTSCALE_REPO:=${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh ]] || { echo "gptscale-slurm: error:" \
    "$GPTSCALE_REPO/slurm/common.sh not found: run sbatch from the gptscale checkout or set" \
    "GPTSCALE_REPO=/path/to/gptscale" >&2; exit 2; }
# shellcheck source=slurm/common.sh
source "$GPTSCALE_REPO/slurm/common.sh"  # sets -euo pipefail, defines gptscale_launch
gptscale_launch finetune "$@"
