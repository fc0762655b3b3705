"""Start-up and command line shared by both training loops.

    run = start_run(cfg)          # process group, RUN_DIR/config.yaml (rank 0), Monitor -> Run(rank, world, ...)
    ...
    run.close()

    def cli(argv): return run_entry_point("gptscale pretrain", lambda: main(*parse(argv)))

`start_run` is called once the run's inputs are checked (data, task files, DeepSpeed config), so a bad input
leaves no run folder behind. `run_entry_point` applies the one error policy (gptscale.errors.run_cli:
a GptscaleError is a message and exit status 2) and leaves the process group cleanly after a finished run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from gptscale.config import RunConfig, dump_yaml
from gptscale.errors import run_cli
from gptscale.files import atomic_write_bytes
from gptscale.runtime.dist import init_distributed, shutdown
from gptscale.runtime.monitor import Monitor, sink_names

CONFIG_FILE = "config.yaml"
"""The resolved config of a run, in its run folder (every key, defaults included)."""


@dataclass
class Run:
    """A started run: where this process sits in the job, its folder, and its monitor."""

    rank: int
    world: int
    local_rank: int
    run_dir: Path
    monitor: Monitor

    def close(self) -> None:
        self.monitor.close()


def start_run(cfg: RunConfig) -> Run:
    """Join the process group, create the run folder with its config.yaml (rank 0, atomically; every rank
    waits for it) and open the monitor's sinks (train.trackers)."""
    sinks = sink_names(cfg.train.trackers)
    rank, world, local = init_distributed()
    run_dir = Path(cfg.train.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, cfg)
    dist.barrier()
    return Run(rank, world, local, run_dir, Monitor(run_dir, rank, sinks))


def write_config(run_dir: Path, cfg: RunConfig, header: str = "") -> None:
    """RUN_DIR/config.yaml: `cfg` as YAML under `header` (comment lines, e.g. the resume history)."""
    atomic_write_bytes(run_dir / CONFIG_FILE, (header + dump_yaml(cfg)).encode())


def run_entry_point(prog: str, fn: Callable[[], Any]) -> int:
    """Exit status of a training entry point: fn() under the one error policy, then a clean process-group
    exit (barrier + destroy) when it finished."""
    def call() -> int:
        fn()  # returns the run's metrics, not an exit status
        return 0

    rc = run_cli(prog, call)
    if rc == 0:
        shutdown()
    return rc
