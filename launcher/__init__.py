"""Cluster launch for gptscale: submitit executors, requeue-able jobs, fine-tuning grids as job arrays.

    python -m launcher pretrain --nodes 2 --gpus-per-node 8 -- run.yaml [--train.lr=3e-4 ...]
    python -m launcher finetune-grid --tasks rte,mrpc --seeds 1,2,3 --lrs 6.25e-5,1e-4 --out runs/grid -- --init runs/x

Modules: `cli` (the command), `executor` (ExecutorOptions -> submitit executor, submission checks), `jobs`
(the Checkpointable job each task runs), `grid` (sweep cells and the results table). The sbatch scripts in
slurm/ do the same launch without submitit.
"""
