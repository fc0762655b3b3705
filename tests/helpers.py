"""What several test modules use: paths, the child-process environment, running gptscale as a user would,
and reading a run's outputs back. The one module tests import helpers from (fixtures live in conftest.py);
no test module imports another."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from gptscale.runtime import faults
from gptscale.runtime.dist import DIST_VARS, free_port  # noqa: F401 (re-exported for the tests)

REPO = Path(__file__).resolve().parent.parent
PRETRAIN = str(REPO / "gptscale" / "pretrain.py")
FINETUNE = str(REPO / "gptscale" / "finetune.py")

SHARD_ARGS = ["--seq-len", "32", "--val-fraction", "0.2", "--seed", "7", "--gutenberg", "--shard-size-mb", "0.02"]
"""`gptscale shard` flags of the session's shard set (conftest.shard_dir)."""

TINY = ["--model.preset=gpt2-tiny", "--model.n_ctx=64", "--model.dropout=0.0", "--train.precision=fp32",
        "--train.ds_config=ds_configs/zero2.json", "--finetune.batch_size=8", "--finetune.micro_batch_size=8",
        "--finetune.lr=1e-3"]
"""Fine-tuning flags for a seconds-fast model and recipe."""

fault_env = faults.env
"""fault_env(nan_micro="2,3") -> {"GPTSCALE_FAULTS": ...}: arms gptscale.runtime.faults hooks in a child."""


def child_env(**extra: str) -> dict[str, str]:
    """This environment without a launcher's process-group or Slurm variables, on DeepSpeed's CPU
    accelerator, one OMP thread, this interpreter's bin/ first on PATH; plus `extra`."""
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS and not k.startswith("SLURM_")}
    return dict(env, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PATH=bin_dir + os.pathsep + os.environ["PATH"],
                **extra)


def run_cli(*args: str, timeout: float = 600) -> str:
    """Run the `gptscale` console script as a user would; fail the test with its output on error."""
    exe = [shutil.which("gptscale")] if shutil.which("gptscale") else [sys.executable, "-m", "gptscale"]
    p = subprocess.run([*exe, *args], capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        pytest.fail(f"gptscale {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}", pytrace=False)
    return p.stdout + p.stderr


def gptscale(*args, timeout=600, expect_ok=True) -> subprocess.CompletedProcess:
    """`python -m gptscale ARGS` from the checkout in child_env(); asserts rc 0 unless expect_ok=False."""
    p = subprocess.run([sys.executable, "-m", "gptscale", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, cwd=str(REPO), env=child_env())
    if expect_ok:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def base_config(tmp: Path, shard_dir: Path, tok_dir: Path, **train) -> Path:
    """A seconds-fast pre-training config file on the session's shards; `train` overrides train.* keys."""
    cfg = {
        "model": {"preset": "gpt2-tiny", "vocab_size": 2000, "n_ctx": 64},
        "data": {"shards": str(shard_dir), "tokenizer": str(tok_dir), "seq_len": 32},
        "train": {"run_dir": str(tmp / "run"), "ds_config": str(REPO / "ds_configs" / "zero2.json"),
                  "precision": "fp32", "micro_batch_size": 4, "grad_accum_steps": 2, "max_steps": 8,
                  "warmup_steps": 2, "log_interval": 1, "eval_interval": 4, "eval_steps": 2,
                  "checkpoint_interval": 4, "lr": 1e-3, "peak_tflops": 1.0, **train},
    }
    f = tmp / "run.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def launch(config: Path, *overrides: str, nproc: int = 2, launcher: str = "torchrun", env: dict | None = None,
           expect_ok: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Start a real multi-process pre-training run as a user would, in its own process group."""
    if nproc == 1 and launcher == "torchrun":
        cmd = [sys.executable, "-m", "gptscale", "pretrain"]
    elif launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), PRETRAIN]
    else:
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(nproc), "--master_port",
               str(free_port()), PRETRAIN]
    cmd += ["--config", str(config), *overrides]
    p = subprocess.run(cmd, env=child_env(**(env or {})), capture_output=True, text=True, timeout=timeout,
                       start_new_session=True, cwd=str(REPO))
    if expect_ok and p.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}", pytrace=False)
    return p


def losses(run_dir: Path) -> dict[int, float]:
    """Training loss per step from metrics.jsonl (a step logged twice, by a killed run and its resume: last wins)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def read_rows(folder: Path, split: str) -> np.ndarray:
    """Every row of a shard set's split, read with pyarrow alone (no gptscale code)."""
    m = json.loads((folder / "manifest.json").read_text())
    arrs = []
    for sh in m["splits"][split]["shards"]:
        col = pa.ipc.open_file(pa.memory_map(str(folder / sh["file"]))).get_batch(0).column(0)
        arrs.append(col.values.to_numpy().reshape(len(col), col.type.list_size))
    return np.concatenate(arrs) if arrs else np.zeros((0, m["row_len"]), np.uint16)
