# shellcheck shell=bash
# Sourced by slurm/pretrain.sh and slurm/finetune.sh inside the batch job: environment, then one `srun`
# that starts one task per GPU on every node. Not a job script itself.
set -euo pipefail  # for the job script sourcing this

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
    cd "${SLURM_SUBMIT_DIR:-$PWD}" || gptscale_die "cannot cd to the submit folder ${SLURM_SUBMIT_DIR:-$PWD}"

    # Python: an activated venv or GPTSCALE_VENV=DIR, then GPTSCALE_PYTHON (default: python on PATH).
    if [[ -n ${GPTSCALE_VENV:-} ]]; then
        # shellcheck disable=SC1091
        source "$GPTSCALE_VENV/bin/activate" || gptscale_die "GPTSCALE_VENV=$GPTSCALE_VENV has no bin/activate"
    fi
    local py=${GPTSCALE_PYTHON:-python}
    command -v "$py" >/dev/null ||
        gptscale_die "'$py' not found on $(hostname): set GPTSCALE_PYTHON=/path/to/python or GPTSCALE_VENV=DIR"
    export PYTHONPATH="$GPTSCALE_REPO${PYTHONPATH:+:$PYTHONPATH}"

    # Rendezvous (first host, port from the job id and restart count, GPTSCALE_MASTER_ADDR/PORT), stale
    # RANK/WORLD_SIZE/... dropped, NCCL/OMP defaults where unset, srun's flags, one task per GPU, GPTSCALE_ARGS
    # split by shell quoting rules (never evaluated: `$(...)` stays text): gptscale/runtime/dist.py (slurm_env)
    # prints them as shell-quoted lines and exits 2 with a message where a rule is broken.
    local setup srun_opts=() gptscale_args=() gpus=${SLURM_GPUS_ON_NODE:-0}
    setup=$("$py" -m gptscale.runtime.dist slurm-env "$sub") || exit $?
    eval "$setup"

    # Config file and overrides: `sbatch slurm/$sub.sh [CONFIG] [--k=v ...]`, else GPTSCALE_CONFIG / GPTSCALE_ARGS.
    local args=() shown
    if [[ $# -gt 0 && $1 != -* ]]; then
        args+=(--config "$1")
        shift
    elif [[ -n ${GPTSCALE_CONFIG:-} ]]; then
        args+=(--config "$GPTSCALE_CONFIG")
    fi
    args+=("${gptscale_args[@]}")  # GPTSCALE_ARGS="--train.run_dir='my run'": one argument, quotes removed
    args+=("$@")  # command-line overrides come last: they win

    echo "gptscale-slurm: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) $sub on ${SLURM_JOB_NUM_NODES:-1}" \
        "node(s) [$SLURM_JOB_NODELIST], ${SLURM_NTASKS:-1} task(s), $gpus GPU(s)/node," \
        "master $MASTER_ADDR:$MASTER_PORT, python $(command -v "$py"), cwd $PWD"
    printf -v shown ' %q' "$sub" "${args[@]}"  # each argument as the shell would need it typed
    echo "gptscale-slurm: $py -m gptscale$shown"

    # srun: every task gets SLURM_PROCID/NTASKS/LOCALID; gptscale.runtime.dist turns them into RANK/WORLD_SIZE/LOCAL_RANK.
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

