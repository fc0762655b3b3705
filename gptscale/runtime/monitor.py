"""Run monitoring for both training loops: a Monitor that fans out to small pluggable sinks, rate/ETA, MFU.

    mon = Monitor(run_dir, rank, sinks=("console", "jsonl", "tensorboard"))    # train.trackers
    mon.log("a console line")                      # console (stdout + RUN_DIR/train.log)
    mon.record(step, {"loss": 2.3, "lr": 1e-4})    # jsonl (RUN_DIR/metrics.jsonl)
    mon.scalars(step, {"train/loss": 2.3})         # tensorboard (RUN_DIR/tb/)

A sink is a class in SINKS with any of ``text``, ``record``, ``scalars``, ``close``: a new tracker (W&B,
MLflow, ...) is one class and one SINKS entry here, selected with ``--train.trackers=console,jsonl,NAME``.
Rank 0 writes everything; other ranks' Monitors do nothing. Named `monitor` (not `logging`) so that
`deepspeed gptscale/pretrain.py`, which puts gptscale/ on sys.path, cannot shadow the standard library's
logging module.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from torch.utils.tensorboard import SummaryWriter

from gptscale.config_types import ConfigError

# Dense peak TFLOP/s per device for the MFU denominator (bf16/fp16 tensor cores; fp32 uses the TF32 figure).
PEAK_TFLOPS = {
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.5},
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.5},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 183.0},
    "A10": {"bf16": 125.0, "fp16": 125.0, "fp32": 62.5},
    "V100": {"bf16": 125.0, "fp16": 125.0, "fp32": 15.7},
}


def peak_tflops(precision: str, override: float | None) -> float | None:
    """The flag's value, else the default for this GPU model, else None (CPU: no MFU)."""
    if override is not None:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, table in PEAK_TFLOPS.items():
        if key in name:
            return table[precision]
    return None


def memory_gb() -> float:
    """CUDA max allocated (GB) on GPU, else this process's resident set size (GB)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return psutil.Process(os.getpid()).memory_info().rss / 2**30


class Sink:
    """One destination of a run's records; each method is a no-op unless the sink overrides it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def text(self, line: str) -> None:
        """A human-readable line."""

    def record(self, step: int, values: dict[str, Any]) -> None:
        """One structured record (every value, None included)."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Named scalar series (tags such as 'train/loss'), to plot."""

    def close(self) -> None:
        """Flush and close."""


class FileSink(Sink):
    """A sink that appends lines to one file of the run folder (a resumed run continues it)."""

    filename = ""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self.file = open(run_dir / self.filename, "a")

    def write(self, line: str) -> None:
        self.file.write(line + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class ConsoleSink(FileSink):
    """Lines on stdout (flushed: one line per step reads well in Slurm output files) and in RUN_DIR/train.log."""

    filename = "train.log"

    def text(self, line: str) -> None:
        print(line, flush=True)
        self.write(line)


class JsonlSink(FileSink):
    """RUN_DIR/metrics.jsonl: one JSON object per record."""

    filename = "metrics.jsonl"

    def record(self, step: int, values: dict[str, Any]) -> None:
        self.write(json.dumps({"step": step, **values}))


class TensorBoardSink(Sink):
    """RUN_DIR/tb/: TensorBoard event files (`tensorboard --logdir RUN_DIR/tb`)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self.writer = SummaryWriter(str(run_dir / "tb"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


SINKS: dict[str, type[Sink]] = {"console": ConsoleSink, "jsonl": JsonlSink, "tensorboard": TensorBoardSink}
"""Tracker name (train.trackers) -> its sink."""


def sink_names(spec: str) -> list[str]:
    """train.trackers 'console,jsonl' -> ['console', 'jsonl'], each checked against SINKS (ConfigError)."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in SINKS]
    if unknown:
        raise ConfigError(f"train.trackers={spec!r}: unknown tracker(s) {unknown}; choose from {', '.join(SINKS)}")
    return names


class Monitor:
    """Fans each call out to the run's sinks on rank 0; a no-op elsewhere (and after close)."""

    def __init__(self, run_dir: Path, rank: int, sinks: list[str] | tuple[str, ...] = tuple(SINKS)):
        self.sinks: list[Sink] = [SINKS[name](Path(run_dir)) for name in sinks] if rank == 0 else []

    def log(self, line: str) -> None:
        for s in self.sinks:
            s.text(line)

    def record(self, step: int, values: dict[str, Any]) -> None:
        for s in self.sinks:
            s.record(step, values)

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        """Scalar series; None values (a metric this device has not got, e.g. MFU on CPU) are left out."""
        values = {k: float(v) for k, v in values.items() if v is not None}
        for s in self.sinks:
            s.scalars(step, values)

    def close(self) -> None:
        """Flush and close every sink (idempotent)."""
        for s in self.sinks:
            s.close()
        self.sinks = []


class Progress:
    """Rate and ETA of `total` units of work, counted from `done` at construction (a resumed run's first step)."""

    def __init__(self, total: int, done: int = 0) -> None:
        self.total, self.start, self.t0 = total, done, time.perf_counter()

    def rate(self, done: int) -> float:
        """Units per second since construction."""
        return (done - self.start) / max(time.perf_counter() - self.t0, 1e-9)

    def eta(self, done: int) -> str:
        """Time left at the rate so far, e.g. '3m05s' or '2h10m'."""
        rate = self.rate(done)
        return fmt_time((self.total - done) / rate if rate > 0 else 0.0)


def fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
