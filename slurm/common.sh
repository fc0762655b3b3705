# shellcheck shell=bash
# Sourced by slurm/pretrain.sh and slurm/finetune.sh inside the batch job: environment, then one `srun`
# that starts one task per GPU on every node. Not a job script itself.

gptscale_die() {
    echo "gptscale-slurm: error: $*" >&2
    exit 2
}

# gptscale_launch SUBCOMMAND [CONFIG] [--section.key=value ...]
gptscale_launch() {
    local sub=$1
    shift
    [[ -n ${SLURM_JOB_ID:-} ]] || gptscale_die "not inside a Slurm job: submit with sbatch slurm/$sub.sh ..."
    if [[ $sub != pretrain ]]; then
        trap gptscale_requeue USR2  # first thing: USR2's default action would end this shell and the job
    fi

    # Relative paths in configs and overrides resolve against the folder `sbatch` was run from.
    cd "${SLURM_SUBMIT_DIR:-$PWD}"

    # Python: an activated venv or GPTSCALE_VENV=DIR, then GPTSCALE_PYTHON (default: python on PATH).
    if [[ -n ${GPTSCALE_VENV:-} ]]; then
        # shellcheck disable=SC1091
        source "$GPTSCALE_VENV/bin/activate" || gptscale_die "GPTSCALE_VENV=$GPTSCALE_VENV has no bin/activate"
    fi
    local py=${GPTSCALE_PYTHON:-python}
    command -v "$py" >/dev/null ||
        gptscale_die "'$py' not found on $(hostname): set GPTSCALE_PYTHON=/path/to/python or GPTSCALE_VENV=DIR"
    export PYTHONPATH="$GPTSCALE_REPO${PYTHONPATH:+:$PYTHONPATH}"

    # Config file and overrides: `sbatch slurm/$sub.sh [CONFIG] [--k=v ...]`, else GPTSCALE_CONFIG / GPTSCALE_ARGS.
    local args=()
    if [[ $# -gt 0 && $1 != -* ]]; then
        args+=(--config "$1")
        shift
    elif [[ -n ${GPTSCALE_CONFIG:-} ]]; then
        args+=(--config "$GPTSCALE_CONFIG")
    fi
    if [[ -n ${GPTSCALE_ARGS:-} ]]; then
        local extra
        read -r -a extra <<<"$GPTSCALE_ARGS"
        args+=("${extra[@]}")
    fi
    args+=("$@")  # command-line overrides come last: they win

    # One task per GPU: the allocation's tasks per node must equal its GPUs per node.
    local gpus=${SLURM_GPUS_ON_NODE:-0} tasks=${SLURM_NTASKS_PER_NODE:-}
    if [[ $gpus -gt 0 && -n $tasks && $tasks -ne $gpus ]]; then
        gptscale_die "--ntasks-per-node=$tasks but --gpus-per-node=$gpus: gptscale runs one task per GPU; " \
            "pass both, e.g. sbatch --gpus-per-node=$gpus --ntasks-per-node=$gpus slurm/$sub.sh ..."
    fi

    # Rendezvous: the first host of the allocation, a port derived from the job id (same after a requeue).
    local hosts
    mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    [[ ${#hosts[@]} -gt 0 ]] || gptscale_die "scontrol show hostnames '$SLURM_JOB_NODELIST' printed nothing"
    unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE  # stale values from the submit shell would win over srun's
    # GPTSCALE_MASTER_ADDR: e.g. an IP or the node's InfiniBand name where Slurm's node names do not resolve
    export MASTER_ADDR=${GPTSCALE_MASTER_ADDR:-${hosts[0]}}
    export MASTER_PORT=${GPTSCALE_MASTER_PORT:-$((10000 + SLURM_JOB_ID % 50000))}

    # NCCL and threads: defaults only where the user (or the cluster's module) set nothing.
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
    export PYTHONUNBUFFERED=1
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}  # CPU nodes (and CI): DeepSpeed's CPU accelerator, gloo
    fi

    echo "gptscale-slurm: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) $sub on ${SLURM_JOB_NUM_NODES:-1}" \
        "node(s) [$SLURM_JOB_NODELIST], ${SLURM_NTASKS:-1} task(s), $gpus GPU(s)/node," \
        "master $MASTER_ADDR:$MASTER_PORT, python $(command -v "$py"), cwd $PWD"
    echo "gptscale-slurm: $py -m gptscale $sub ${args[*]}"

    # srun: every task gets SLURM_PROCID/NTASKS/LOCALID; gptscale.runtime.dist turns them into RANK/WORLD_SIZE/LOCAL_RANK.
    # --kill-on-bad-exit: one failed rank ends the step instead of leaving the others hanging in a collective.
    local srun_opts=(--kill-on-bad-exit=1 --unbuffered)
    if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
        srun_opts+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")  # Slurm 22.05's srun does not inherit it
    fi
    if [[ $sub == pretrain ]]; then
        # The ranks catch USR2 themselves: checkpoint at the next step boundary, `scontrol requeue`, exit 0.
        exec srun "${srun_opts[@]}" "$py" -u -m gptscale "$sub" "${args[@]}"
    fi
    gptscale_run_restartable srun "${srun_opts[@]}" bash -c 'trap "" USR2; exec "$@"' task \
        "$py" -u -m gptscale "$sub" "${args[@]}"
}

# For runs without a mid-run checkpoint (fine-tuning): the tasks ignore USR2; this batch shell receives it
# (`#SBATCH --signal=B:USR2@secs`, `scancel --batch --signal=USR2 JOBID`) and requeues the job, which then
# starts again from the beginning, at most GPTSCALE_MAX_RESTARTS times (default 3) so that a run longer
# than the time limit cannot loop forever.
gptscale_requeue() {
    local max=${GPTSCALE_MAX_RESTARTS:-3} restarts=${SLURM_RESTART_COUNT:-0}
    if [[ $restarts -ge $max ]]; then
        echo "gptscale-slurm: USR2 after $restarts restarts (GPTSCALE_MAX_RESTARTS=$max): not requeueing" >&2
        return
    fi
    echo "gptscale-slurm: USR2: requeueing job $SLURM_JOB_ID; the run starts again from the beginning" >&2
    scontrol requeue "$SLURM_JOB_ID" || echo "gptscale-slurm: scontrol requeue $SLURM_JOB_ID failed" >&2
}

gptscale_run_restartable() {
    "$@" &
    local pid=$! rc=0
    while true; do
        wait "$pid" && rc=0 || rc=$?
        kill -0 "$pid" 2>/dev/null || break  # `wait` also returns when the trap fires: keep waiting
    done
    exit "$rc"
}

