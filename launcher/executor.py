"""Executor options (one typed dataclass), the submitit executor built from them, and clear submission errors.

    opts = ExecutorOptions(nodes=2, gpus_per_node=8, partition="gpu", time="24:00:00")
    executor = make_executor(opts, name="gptscale-pretrain")
    job = submit(executor, opts, GptscaleJob(...))

One task per GPU (`tasks_per_node` defaults to `gpus_per_node`). Jobs are requeue-able and get SIGUSR2
`signal_delay_s` seconds before their time limit (NCCL owns SIGUSR1). A request the cluster can never
satisfy fails before or right after `sbatch` with a message naming the flag and the cluster's limit,
instead of pending forever.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import time as _time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import submitit

from gptscale.errors import GptscaleError
from gptscale.runtime.dist import LaunchError, srun_options, tasks_per_node

# Pending reasons that never clear by waiting (the request exceeds what the partition or nodes have).
NEVER_STARTS = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints",
                "QOSMaxGRESPerNode", "QOSMaxNodePerJobLimit", "QOSMaxWallDurationPerJobLimit", "InvalidQOS",
                "InvalidAccount", "AssocMaxNodesPerJobLimit", "AssocMaxWallDurationPerJobLimit"}


class LauncherError(GptscaleError, RuntimeError):
    """A launch that cannot go ahead; the message names the flag and what to change."""


@dataclass
class ExecutorOptions:
    """Where and how big a job is. Field names match the command-line flags (`--gpus-per-node` ...)."""

    executor: Literal["slurm", "local"] = "slurm"
    """'slurm' submits with sbatch; 'local' runs the tasks as processes on this machine (one node)."""
    nodes: int = 1
    """Nodes of the allocation."""
    gpus_per_node: int = 1
    """GPUs per node; one task (rank) per GPU."""
    tasks_per_node: int | None = None
    """Ranks per node; default gpus_per_node (one per GPU), 1 on CPU-only runs (gpus_per_node=0)."""
    cpus_per_task: int = 8
    """CPU cores per rank (data loading, OMP threads)."""
    time: str = "24:00:00"
    """Time limit: minutes, or [D-]HH:MM[:SS]. SIGUSR2 comes signal_delay_s before it."""
    partition: str | None = None
    """Slurm partition (default: the cluster's default partition)."""
    account: str | None = None
    """Slurm account to charge."""
    qos: str | None = None
    """Slurm quality of service."""
    constraint: str | None = None
    """Node features, e.g. 'h100' or 'a100&ib'."""
    mem: str | None = None
    """Memory per node as Slurm takes it (e.g. 500G; 0 = all of it)."""
    signal_delay_s: int = 300
    """Seconds before the time limit at which Slurm sends SIGUSR2 (checkpoint, then requeue)."""
    max_timeouts: int = 3
    """How many times a job that reached its time limit is requeued (preemptions do not count)."""
    folder: str = "logs/submitit"
    """submitit's folder: FOLDER/<job id>/ gets the job script, pickles and one log pair per task. Must be on
    a filesystem the nodes share."""
    array_parallelism: int = 64
    """Array tasks (grid runs) running at once."""
    python: str | None = None
    """Python on the compute nodes; default: this interpreter."""

    def __post_init__(self) -> None:
        for key in ("nodes", "cpus_per_task", "signal_delay_s", "array_parallelism"):
            if getattr(self, key) < 1:
                raise LauncherError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        if self.gpus_per_node < 0:
            raise LauncherError(f"--gpus-per-node must be >= 0, got {self.gpus_per_node}")
        if self.executor == "local" and self.nodes != 1:
            raise LauncherError(f"--executor local runs on this machine only: use --nodes 1 (got {self.nodes})")
        try:
            _ = self.ntasks_per_node  # one task per GPU, else a LaunchError naming both flags
        except LaunchError as e:
            raise LauncherError(str(e)) from None
        parse_time(self.time)  # a bad --time fails here, naming the flag

    @property
    def ntasks_per_node(self) -> int:
        return tasks_per_node(self.gpus_per_node, self.tasks_per_node, "--tasks-per-node", fix="drop --tasks-per-node")

    @property
    def timeout_min(self) -> int:
        return parse_time(self.time)


def parse_time(spec: str) -> int:
    """Slurm time spec -> minutes: '90', '1:30:00', '2-00:00:00', '45:00' (MM:SS)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(spec).strip())
    if not m:
        raise LauncherError(f"--time={spec!r}: use minutes or [D-]HH:MM:SS, e.g. --time 24:00:00")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is None and b is None:
        minutes = a
    elif c is not None:
        minutes = (days or 0) * 1440 + a * 60 + b + (1 if c else 0)
    elif days is not None:
        minutes = days * 1440 + a * 60 + (b or 0)
    else:
        minutes = a + (1 if b else 0)  # MM:SS
    if minutes < 1:
        raise LauncherError(f"--time={spec!r} is under a minute")
    return minutes


def make_executor(opts: ExecutorOptions, name: str) -> Any:
    """A submitit AutoExecutor for `opts` (srun one task per GPU, requeue, USR2 before the time limit). The ranks'
    environment defaults (NCCL, OMP) are set by the job itself (launcher/jobs.py), before torch loads."""
    Path(opts.folder).mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"slurm_max_num_timeout": opts.max_timeouts}
    if opts.python:
        kwargs[f"{opts.executor}_python"] = opts.python
    folder = str(Path(opts.folder) / "%j")
    if opts.executor == "slurm" and not shutil.which("sbatch"):
        raise LauncherError("sbatch not found: this is not a Slurm login node; use --executor local to run here")
    ex = submitit.AutoExecutor(folder=folder, cluster=opts.executor, **kwargs)
    params: dict[str, Any] = {"name": name, "nodes": opts.nodes, "tasks_per_node": opts.ntasks_per_node,
                              "gpus_per_node": opts.gpus_per_node, "cpus_per_task": opts.cpus_per_task,
                              "timeout_min": opts.timeout_min}
    if opts.executor == "slurm":
        slurm = {"partition": opts.partition, "account": opts.account, "qos": opts.qos,
                 "constraint": opts.constraint, "mem": opts.mem}
        params.update({f"slurm_{k}": v for k, v in slurm.items() if v is not None})
        params.update(
            slurm_signal_delay_s=opts.signal_delay_s,
            slurm_array_parallelism=opts.array_parallelism,
            slurm_additional_parameters={"requeue": True},
            # submitit's srun line has --unbuffered already
            slurm_srun_args=[o for o in srun_options(opts.cpus_per_task) if o != "--unbuffered"],
        )
    ex.update_parameters(**params)
    return ex


# ------------------------------------------------------------------------------------ cluster limits


def cluster_limits(partition: str | None) -> dict[str, int] | None:
    """{'nodes', 'max_gpus_per_node', 'max_cpus_per_node'} of the partition (default partition if None),
    from `sinfo`; None where sinfo is missing or says nothing usable."""
    if not shutil.which("sinfo"):
        return None
    cmd = ["sinfo", "-h", "-N", "-o", "%N|%P|%c|%G"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [ln.split("|") for ln in out.splitlines() if ln.count("|") == 3]
    if not partition and any(r[1].endswith("*") for r in rows):
        rows = [r for r in rows if r[1].endswith("*")]
    if not rows:
        return None
    nodes: dict[str, tuple[int, int]] = {}
    for name, _, cpus, gres in rows:
        gpus = sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,(]+)?:(\d+)", gres))
        nodes[name] = (gpus, int(cpus) if cpus.isdigit() else 0)
    return {"nodes": len(nodes), "max_gpus_per_node": max(g for g, _ in nodes.values()),
            "max_cpus_per_node": max(c for _, c in nodes.values())}


def check_request(opts: ExecutorOptions) -> None:
    """Refuse, before sbatch, a request larger than the partition (GPUs per node, nodes, CPUs per node)."""
    if opts.executor != "slurm":
        return
    lim = cluster_limits(opts.partition)
    if lim is None:
        return
    where = f"partition {opts.partition}" if opts.partition else "the default partition"
    if opts.gpus_per_node > lim["max_gpus_per_node"]:
        raise LauncherError(f"--gpus-per-node={opts.gpus_per_node}: the largest node in {where} has "
                            f"{lim['max_gpus_per_node']} GPUs (sinfo -N -o '%N %G'); lower --gpus-per-node to at most "
                            f"{lim['max_gpus_per_node']} and scale out with --nodes")
    if opts.nodes > lim["nodes"]:
        raise LauncherError(f"--nodes={opts.nodes}: {where} has {lim['nodes']} nodes; lower --nodes")
    cpus = opts.cpus_per_task * opts.ntasks_per_node
    if lim["max_cpus_per_node"] and cpus > lim["max_cpus_per_node"]:
        raise LauncherError(f"--cpus-per-task={opts.cpus_per_task} x {opts.ntasks_per_node} tasks per node = {cpus} "
                            f"CPUs, but the largest node in {where} has {lim['max_cpus_per_node']}; "
                            f"lower --cpus-per-task")


def explain_submit_error(err: Exception, opts: ExecutorOptions) -> LauncherError:
    """sbatch's refusal, with the request and the cluster's limits next to it."""
    text = str(err)
    m = re.search(r"sbatch: error: (.*)", text)
    reason = m.group(1).strip() if m else text.strip().splitlines()[-1] if text.strip() else repr(err)
    lim = cluster_limits(opts.partition) or {}
    have = (f"; the cluster has {lim['nodes']} node(s) with at most {lim['max_gpus_per_node']} GPUs and "
            f"{lim['max_cpus_per_node']} CPUs each" if lim else "")
    return LauncherError(f"Slurm refused the job: {reason}. Requested --nodes={opts.nodes} --gpus-per-node="
                         f"{opts.gpus_per_node} --cpus-per-task={opts.cpus_per_task} (x {opts.ntasks_per_node} tasks "
                         f"per node){' --partition=' + opts.partition if opts.partition else ''}{have}. "
                         f"Lower the request or pick another --partition")


def pending_reason(job_id: str) -> str:
    """Why a pending job (or the first pending task of an array) waits; '' when it is not pending."""
    try:
        p = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True,
                           timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    for line in p.stdout.splitlines():
        state, _, reason = line.strip().partition("|")
        if state == "PENDING":
            return reason
    return ""


def submit(executor: Any, opts: ExecutorOptions, fn: Any) -> Any:
    """executor.submit(fn) with the checks: too big for the cluster -> LauncherError, not a pending job."""
    check_request(opts)
    try:
        job = executor.submit(fn)
    except Exception as e:  # submitit's FailedJobError carries sbatch's output
        if opts.executor == "slurm":
            raise explain_submit_error(e, opts) from e
        raise
    refuse_never_starting([job], opts)
    return job


def refuse_never_starting(jobs: list[Any], opts: ExecutorOptions, wait_s: float = 1.0) -> None:
    """Clusters without EnforcePartLimits accept impossible jobs and leave them PENDING forever: cancel them."""
    if opts.executor != "slurm" or not jobs:
        return
    _time.sleep(wait_s)
    reason = pending_reason(str(jobs[0].job_id).split("_")[0])
    if reason in NEVER_STARTS:
        for j in jobs:
            j.cancel(check=False)
        raise LauncherError(f"job {jobs[0].job_id} can never start (Slurm: {reason}) and was cancelled: the request "
                            f"--nodes={opts.nodes} --gpus-per-node={opts.gpus_per_node} --cpus-per-task="
                            f"{opts.cpus_per_task} --time={opts.time} exceeds the limits of "
                            f"{opts.partition or 'the default partition'} (scontrol show partition)")


def options_from(ns: Any) -> ExecutorOptions:
    """ExecutorOptions from an argparse namespace holding the same field names."""
    return ExecutorOptions(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(ExecutorOptions)
                              if hasattr(ns, f.name)})
