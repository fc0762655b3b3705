"""Run monitoring: one console line per log interval, TensorBoard scalars, metrics.jsonl, MFU.

Rank 0 writes everything; other ranks construct a Monitor that does nothing. Named `monitor` (not
`logging`) so that `deepspeed gptscale/pretrain.py`, which puts gptscale/ on sys.path, cannot shadow the
standard library's logging module.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

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
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**30


class Monitor:
    """Console line + TensorBoard + metrics.jsonl on rank 0; a no-op elsewhere."""

    def __init__(self, run_dir: Path, rank: int, total_steps: int):
        self.enabled = rank == 0
        self.total_steps = total_steps
        self.tb = None
        self.t_start = time.perf_counter()
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
            self.jsonl = open(run_dir / "metrics.jsonl", "a")
            self.logfile = open(run_dir / "train.log", "a")

    def log(self, msg: str) -> None:
        """A console line on rank 0, also appended to RUN_DIR/train.log."""
        if self.enabled:
            print(msg, flush=True)
            self.logfile.write(msg + "\n")
            self.logfile.flush()

    def step(self, step: int, metrics: dict[str, Any], console: bool) -> None:
        """Record one optimizer step (metrics.jsonl always; TensorBoard + console when `console`)."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        if not console:
            return
        for key, tag in (("loss", "train/loss"), ("lr", "lr"), ("grad_norm", "grad_norm"),
                         ("tokens_per_sec", "tokens_per_sec"), ("tflops", "tflops"), ("mfu", "mfu"),
                         ("loss_scale", "loss_scale"), ("memory_gb", "memory_gb"), ("skipped", "train/skipped_steps")):
            if metrics.get(key) is not None:
                self.tb.add_scalar(tag, metrics[key], step)
        self.tb.flush()
        elapsed = time.perf_counter() - self.t_start
        eta = elapsed / max(step, 1) * (self.total_steps - step)
        parts = [f"step {step}/{self.total_steps}", f"loss {metrics['loss']:.4f}", f"lr {metrics['lr']:.3e}"]
        if metrics.get("grad_norm") is not None:
            parts.append(f"gnorm {metrics['grad_norm']:.3f}")
        parts.append(f"{metrics['tokens_per_sec']:,.0f} tok/s")
        if metrics.get("tflops") is not None:
            parts.append(f"{metrics['tflops']:.3g} TFLOP/s")
        if metrics.get("mfu") is not None:
            parts.append(f"MFU {100 * metrics['mfu']:.1f}%")
        if metrics.get("loss_scale") is not None:
            parts.append(f"scale {metrics['loss_scale']:g}")
        parts.append(f"mem {metrics['memory_gb']:.2f} GB")
        if metrics.get("skipped"):
            parts.append(f"skipped {metrics['skipped']}")
        parts.append(f"eta {_fmt_time(eta)}")
        self.log(" | ".join(parts))

    def eval(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        ppl = math.exp(min(loss, 50.0))
        self.tb.add_scalar("val/loss", loss, step)
        self.tb.add_scalar("val/ppl", ppl, step)
        self.tb.flush()
        self.jsonl.write(json.dumps({"step": step, "val_loss": loss, "val_ppl": ppl}) + "\n")
        self.jsonl.flush()
        self.log(f"step {step} | val loss {loss:.4f} | val ppl {ppl:.2f}")

    def close(self) -> None:
        """Flush and close the files (idempotent; later calls log nothing)."""
        if self.enabled:
            self.tb.close()
            self.jsonl.close()
            self.logfile.close()
            self.enabled = False


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
