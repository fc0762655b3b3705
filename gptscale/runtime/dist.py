"""Process-group setup that works under `deepspeed`, `torchrun`, `srun` and plain `python`.

Never needs mpi4py, pdsh or ssh: RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT are taken from
the launcher, else derived from SLURM_* (srun), else a single local process.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import socket
import subprocess

import torch


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm node list: 'gpu[03-05,07],cpu1' -> 'gpu03' (scontrol when available)."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def slurm_port(job_id: str) -> int:
    """A port derived from the job id, so all tasks of a job agree without talking (10000-59999)."""
    return 10000 + int(re.sub(r"\D", "", job_id) or 0) % 50000


DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""The process-group variables a launcher sets (and stale copies of which must not reach a new job)."""


def free_port() -> int:
    """A TCP port free on this host right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_env(env=None) -> dict[str, str]:
    """Fill the torch.distributed env vars (launcher's values win, then SLURM_*, then one local process).
    `env` defaults to os.environ, which is updated in place (torch.distributed reads it)."""
    env = os.environ if env is None else env
    if "RANK" not in env and "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_ADDR", first_slurm_host(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "localhost"))))
        env.setdefault("MASTER_PORT", str(slurm_port(env.get("SLURM_JOB_ID", "0"))))
    env.setdefault("RANK", "0")
    env.setdefault("WORLD_SIZE", "1")
    env.setdefault("LOCAL_RANK", "0")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in env:
        if env["WORLD_SIZE"] != "1":
            raise RuntimeError("WORLD_SIZE > 1 but MASTER_PORT is unset: launch with deepspeed, torchrun or srun")
        env["MASTER_PORT"] = str(free_port())
    return {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}


def init_distributed() -> tuple[int, int, int]:
    """Start the process group (nccl on GPUs, gloo on CPU); returns (rank, world_size, local_rank)."""
    import deepspeed

    env = setup_env()
    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # DeepSpeed compiles a shared-memory op (24-64 s) on CPU that only inference all-reduce uses.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        backend = "gloo"
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return rank, world, local



def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def print0(*args, **kwargs) -> None:
    """print on global rank 0 only, flushed (one log line per step reads well in Slurm output files)."""
    if rank() == 0:
        print(*args, **kwargs, flush=True)


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def shutdown() -> None:
    """Leave the process group cleanly (barrier, then destroy) so no communicator thread is torn down by the
    interpreter's exit (a 'terminate called without an active exception' abort after a finished run)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            torch.distributed.barrier()
        finally:
            torch.distributed.destroy_process_group()
