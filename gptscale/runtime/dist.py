"""Launch, rendezvous and environment rules, the one place for them: Python and the sbatch scripts alike.

Process-group setup that works under `deepspeed`, `torchrun`, `srun` and plain `python`, never needing mpi4py,
pdsh or ssh: RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT are taken from the launcher, else
derived from SLURM_* (srun), else a single local process. The rules, one function each:

- rendezvous of a Slurm job: `master_addr`, `master_port` (GPTSCALE_MASTER_ADDR / GPTSCALE_MASTER_PORT, else
  the first host of the allocation and `slurm_port`: from the job id and restart count, outside the ephemeral
  port range);
- `drop_stale`: RANK / WORLD_SIZE / ... exported from the submitting shell never reach a job's tasks;
- `env_defaults`: NCCL / OMP / PYTHONUNBUFFERED / DS_ACCELERATOR, only where the user set nothing;
- `srun_options`: the flags of every srun that starts ranks;
- `tasks_per_node`: one task per GPU.

The sbatch scripts (slurm/common.sh) take them from the command line, in the batch job:

    eval "$(python -m gptscale.runtime.dist slurm-env pretrain)"    # exit 2 and a message where a rule is broken

torch is imported inside the functions that use it, never at import time: the batch shell runs this module
before its srun and should not pay torch's 1-3 s import, and a submitit task sets OMP_NUM_THREADS before
torch loads.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING

from gptscale.errors import GptscaleError

if TYPE_CHECKING:
    import torch

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""The process-group variables a launcher sets (and stale copies of which must not reach a new job)."""

SLURM_DEFAULTS = {
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # a failed or timed-out collective aborts instead of hanging
    "NCCL_DEBUG": "WARN",                    # INFO prints rings, transports and interfaces
    "OMP_NUM_THREADS": "{cpus_per_task}",    # threads per rank: the job's --cpus-per-task, 1 where unset
    "PYTHONUNBUFFERED": "1",                 # log lines reach the Slurm output file as they are printed
}
"""What the ranks of a Slurm job get where the user (or the cluster's module) set nothing; see env_defaults."""


class LaunchError(GptscaleError, ValueError):
    """A launch rule is broken; the message names the settings and what to change."""


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


PORT_FLOOR = 10000
"""Derived ports lie in PORT_FLOOR-65535, outside the ephemeral range (below 10000 live many well-known services)."""
EPHEMERAL_DEFAULT = (32768, 60999)
"""Linux's default net.ipv4.ip_local_port_range, used where /proc does not tell (another OS, a container)."""
EPHEMERAL_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
RESTART_STRIDE = 7919
"""How far (in candidate ports, a prime) each requeue of a job moves its derived port."""


def ephemeral_range(path: str = EPHEMERAL_FILE) -> tuple[int, int]:
    """The ports the OS hands out for outgoing connections (any of them can be taken by a client socket at any
    moment): this host's net.ipv4.ip_local_port_range, else EPHEMERAL_DEFAULT."""
    try:
        with open(path) as f:
            lo, hi = (int(x) for x in f.read().split()[:2])
    except (OSError, ValueError):
        return EPHEMERAL_DEFAULT
    return (lo, hi) if 0 < lo <= hi < 65536 else EPHEMERAL_DEFAULT


def port_ranges(ephemeral: tuple[int, int]) -> list[range]:
    """The ports a job may derive: PORT_FLOOR-65535 without the ephemeral range (1024-65535 without it where
    that leaves nothing; the whole PORT_FLOOR-65535 where even that is empty)."""
    lo, hi = ephemeral
    for floor in (PORT_FLOOR, 1024):
        ranges = [r for r in (range(floor, min(lo, 65536)), range(max(hi + 1, floor), 65536)) if len(r)]
        if ranges:
            return ranges
    return [range(PORT_FLOOR, 65536)]


def slurm_port(job_id: str, restart: int | str = 0, ephemeral: tuple[int, int] | None = None) -> int:
    """A port derived from the job id and its restart count (SLURM_RESTART_COUNT), so all tasks of a job agree
    without talking (on nodes that share an ip_local_port_range, as a cluster's do), outside the ephemeral range,
    jobs with nearby ids get different ports, and a requeued job does not retry the port its previous run held."""
    ranges = port_ranges(ephemeral_range() if ephemeral is None else ephemeral)
    total = sum(len(r) for r in ranges)
    index = (int(re.sub(r"\D", "", job_id) or 0) + (_int(str(restart)) or 0) * RESTART_STRIDE) % total
    for r in ranges:
        if index < len(r):
            return r[index]
        index -= len(r)
    raise AssertionError("unreachable: index < total")


def master_addr(env: Mapping[str, str]) -> str:
    """MASTER_ADDR of a Slurm job: GPTSCALE_MASTER_ADDR where set (an IP or the InfiniBand name where Slurm's
    node names do not resolve), else the first host of the allocation."""
    return env.get("GPTSCALE_MASTER_ADDR") or first_slurm_host(
        env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "localhost")))


def master_port(env: Mapping[str, str]) -> int:
    """MASTER_PORT of a Slurm job: GPTSCALE_MASTER_PORT where set (a free port where another job on the first
    node got the same derived one), else slurm_port(SLURM_JOB_ID, SLURM_RESTART_COUNT): the same on every task
    of one run, another one after a requeue."""
    text = env.get("GPTSCALE_MASTER_PORT", "")
    if not text:
        return slurm_port(env.get("SLURM_JOB_ID", "0"), env.get("SLURM_RESTART_COUNT", "0"))
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise LaunchError(f"GPTSCALE_MASTER_PORT={text!r} is not a TCP port: set it to a number in 1-65535")
    return int(text)


def drop_stale(env: MutableMapping[str, str]) -> list[str]:
    """Remove the process-group variables (DIST_VARS) from `env`: copies exported from the shell a job was
    submitted from would win over the scheduler's values. Returns the names that were set."""
    return [k for k in DIST_VARS if env.pop(k, None) is not None]


def has_gpu() -> bool:
    """Whether this node has NVIDIA GPUs: nvidia-smi on PATH (cheap, no torch import; the Makefile's test too)."""
    return shutil.which("nvidia-smi") is not None


def env_defaults(env: Mapping[str, str]) -> dict[str, str]:
    """The variables gptscale sets for its ranks, each only where `env` has it unset or empty: in a Slurm job
    (SLURM_JOB_ID set) the SLURM_DEFAULTS table; anywhere without a GPU, DS_ACCELERATOR=cpu (DeepSpeed would
    pick its CPU accelerator by itself, with a warning per process)."""
    table = {}
    if env.get("SLURM_JOB_ID"):
        cpus = env.get("SLURM_CPUS_PER_TASK") or "1"
        table.update({k: v.format(cpus_per_task=cpus) for k, v in SLURM_DEFAULTS.items()})
    if not has_gpu():
        table["DS_ACCELERATOR"] = "cpu"
    return {k: v for k, v in table.items() if not env.get(k)}


def apply_env_defaults(env: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """env_defaults applied to `env` (default os.environ: call it before torch is imported); returns them."""
    env = os.environ if env is None else env
    new = env_defaults(env)
    env.update(new)
    return new


def srun_options(cpus_per_task: int | str | None) -> list[str]:
    """The flags of every srun that starts ranks: --kill-on-bad-exit=1 (one failed rank ends the step instead of
    leaving the others hanging in a collective), --unbuffered, and --cpus-per-task (Slurm 22.05's srun does
    not inherit the job's)."""
    opts = ["--kill-on-bad-exit=1", "--unbuffered"]
    if cpus_per_task:
        opts.append(f"--cpus-per-task={cpus_per_task}")
    return opts


def tasks_per_node(gpus: int, tasks: int | None = None, tasks_flag: str = "--ntasks-per-node",
                   fix: str | None = None) -> int:
    """Ranks per node: one per GPU. `tasks` None (not asked for) gives `gpus`, or 1 on a CPU-only run (0 GPUs);
    another count on GPU nodes is a LaunchError naming both flags and `fix` (default: pass both)."""
    if gpus > 0 and tasks is not None and tasks != gpus:
        fix = fix or f"pass both, e.g. --gpus-per-node={gpus} {tasks_flag}={gpus}"
        raise LaunchError(f"{tasks_flag}={tasks} but --gpus-per-node={gpus}: gptscale runs one task per GPU; {fix}")
    return tasks or gpus or 1


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
        if "MASTER_ADDR" not in env:
            env["MASTER_ADDR"] = master_addr(env)
        if "MASTER_PORT" not in env:
            env["MASTER_PORT"] = str(master_port(env))
    env.setdefault("RANK", "0")
    env.setdefault("WORLD_SIZE", "1")
    env.setdefault("LOCAL_RANK", "0")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in env:
        if env["WORLD_SIZE"] != "1":
            raise RuntimeError("WORLD_SIZE > 1 but MASTER_PORT is unset: launch with deepspeed, torchrun or srun")
        env["MASTER_PORT"] = str(free_port())
    return {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}


def _int(text: str | None) -> int | None:
    m = re.match(r"\d+", text or "")
    return int(m.group()) if m else None


def split_args(text: str, name: str = "GPTSCALE_ARGS") -> list[str]:
    """`text` split into arguments by the shell's quoting rules (shlex, POSIX mode): quotes group words and are
    removed, a backslash escapes; nothing is expanded or run ($VAR, $(...), globs reach the program as written).
    Unbalanced quotes are a LaunchError naming `name`."""
    try:
        return shlex.split(text)
    except ValueError as e:  # "No closing quotation", "No escaped character"
        raise LaunchError(f"{name}={text!r}: {e}; balance the quotes, e.g. {name}=\"--train.run_dir='my run' "
                          f"--train.lr=3e-4\"") from None


def slurm_env(env: Mapping[str, str], job: str) -> str:
    """Shell lines for a batch job to `eval` before its srun (slurm/common.sh): unset the stale process-group
    variables, export MASTER_ADDR / MASTER_PORT and env_defaults, set the bash arrays `srun_opts` and
    `gptscale_args` (GPTSCALE_ARGS split by split_args, each word shell-quoted). A broken rule (tasks != GPUs per
    node, a bad GPTSCALE_MASTER_PORT, unbalanced quotes in GPTSCALE_ARGS) is a LaunchError."""
    if not env.get("SLURM_JOB_ID"):
        raise LaunchError(f"not inside a Slurm job (no SLURM_JOB_ID): submit with sbatch slurm/{job}.sh ...")
    gpus = _int(env.get("SLURM_GPUS_ON_NODE")) or 0
    tasks_per_node(gpus, _int(env.get("SLURM_NTASKS_PER_NODE")),
                   fix=f"pass both, e.g. sbatch --gpus-per-node={gpus} --ntasks-per-node={gpus} slurm/{job}.sh ...")
    exports = {"MASTER_ADDR": master_addr(env), "MASTER_PORT": str(master_port(env)), **env_defaults(env)}
    lines = ["unset " + " ".join(k for k in DIST_VARS if k not in exports)]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    lines.append(f"srun_opts=({shlex.join(srun_options(env.get('SLURM_CPUS_PER_TASK')))})")
    lines.append(f"gptscale_args=({shlex.join(split_args(env.get('GPTSCALE_ARGS', '')))})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gptscale.runtime.dist", description="Launch rules for shells.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("slurm-env", help="in a batch job: shell lines to eval before srun (exit 2 if a rule breaks)")
    s.add_argument("job", choices=("pretrain", "finetune"))
    a = p.parse_args(argv)
    try:
        sys.stdout.write(slurm_env(os.environ, a.job))
    except ValueError as e:  # LaunchError, or a node list that cannot be parsed
        print(f"gptscale-slurm: error: {e}", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------------------ inside a rank (torch, lazily)


def init_distributed() -> tuple[int, int, int]:
    """Start the process group (nccl on GPUs, gloo on CPU); returns (rank, world_size, local_rank)."""
    import deepspeed  # lazy, like torch (module docstring)
    import torch

    env = setup_env()
    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        # DeepSpeed compiles a shared-memory op (24-64 s) on CPU that only inference all-reduce uses.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        backend = "gloo"
    if not torch.distributed.is_initialized():
        try:
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
        except RuntimeError as e:  # torch.distributed.DistNetworkError from the rendezvous store
            if not re.search(r"EADDRINUSE|address already in use", str(e), re.IGNORECASE):
                raise
            raise LaunchError(busy_port_message(env["MASTER_ADDR"], int(env["MASTER_PORT"]), rank)) from None
    return rank, world, local


def busy_port_message(addr: str, port: int, rank: int) -> str:
    """What a rank says when its rendezvous port is taken: the port, the host, how to find the holder, the fix
    (with a port free on this host right now, outside the ephemeral range)."""
    alt = suggest_port(port)
    return (f"MASTER_PORT={port} is already in use on {addr} (rank {rank} on {socket.gethostname()} could not open "
            f"the rendezvous there): another job or a stale process holds it (`ss -ltnp | grep :{port}` on that "
            f"host shows which). Start again on a free port: GPTSCALE_MASTER_PORT={alt} (sbatch scripts, launcher "
            f"jobs, srun), or --master_port={alt} for the deepspeed launcher or torchrun")


def suggest_port(busy: int, tries: int = 200) -> int | str:
    """A port after `busy` among the derivable ones (port_ranges) that can be bound on this host right now."""
    ports = [p for r in port_ranges(ephemeral_range()) for p in r]
    start = next((i for i, p in enumerate(ports) if p > busy), 0)
    for p in (ports[(start + i) % len(ports)] for i in range(min(tries, len(ports)))):
        with socket.socket() as s:
            try:
                s.bind(("", p))
            except OSError:
                continue
            return p
    return "<free port>"


def init_single_process() -> tuple[int, int, int]:
    """Rank 0 of a one-process group on a free port, whatever the launching shell exported (benchmarks)."""
    drop_stale(os.environ)
    os.environ.update(setup_env({}))
    return init_distributed()


def rank() -> int:
    import torch  # lazy (module docstring)

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def print0(*args, **kwargs) -> None:
    """print on global rank 0 only, flushed (one log line per step reads well in Slurm output files)."""
    if rank() == 0:
        print(*args, **kwargs, flush=True)


def device() -> torch.device:
    import torch  # lazy (module docstring)

    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def shutdown() -> None:
    """Leave the process group cleanly (barrier, then destroy) so no communicator thread is torn down by the
    interpreter's exit (a 'terminate called without an active exception' abort after a finished run)."""
    import torch  # lazy (module docstring)

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            torch.distributed.barrier()
        finally:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
