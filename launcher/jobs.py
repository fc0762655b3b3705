"""The job submitit runs on every task: gptscale's own pre-training / fine-tuning entry point, requeue-able.

`GptscaleJob(kind, argv, run_dir)` is a `submitit.helpers.Checkpointable`. On each task it turns the
scheduler's variables into RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT (gptscale.runtime.dist for
Slurm, submitit's TorchDistributedEnvironment for the local executor), then calls the same `cli()` that
`python -m gptscale pretrain|finetune` runs. On SIGUSR2 (time limit or preemption) pre-training checkpoints
at the next step boundary and hands the signal to submitit, which calls `checkpoint()` below, requeues the
job and exits; the requeued job resumes from the run directory's `latest` checkpoint (`--resume auto`), so
the resubmission is simply the same job. Fine-tuning has no mid-run checkpoint: it starts again from --init.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import submitit

from gptscale.config import load_config
from gptscale.runtime.dist import apply_env_defaults, drop_stale, setup_env
from gptscale.tasks.outputs import METRICS_FILE

KINDS = ("pretrain", "finetune")


class JobFailed(RuntimeError):
    """The entry point returned an error; the message points at the task's log."""


def resolve_run(kind: str, argv: list[str]) -> tuple[list[str], Path]:
    """Check the config here, before queueing (a typo fails now, not hours later on a node), and pin the
    run directory as an absolute path. Returns (argv with --train.run_dir=ABS, run_dir)."""
    if kind == "finetune":
        from gptscale.finetune import resolve  # lazy: loads torch and DeepSpeed (pretrain's check needs neither)

        run_dir = resolve(argv).train.run_dir  # finetune.py's own flags and default (runs/finetune/TASK)
    else:
        run_dir = load_config(argv)[0].train.run_dir  # raises ConfigError naming the bad key
    path = Path(run_dir).expanduser().resolve()
    return [*argv, f"--train.run_dir={path}"], path


def read_result(kind: str, run_dir: Path) -> dict[str, Any]:
    """What a finished run leaves behind: fine-tuning's metrics.json, pre-training's last metrics record and
    latest checkpoint. Runs inside the job, after training (torch and DeepSpeed are loaded by then)."""
    from gptscale.runtime import checkpoint  # lazy: imports DeepSpeed, which the login node need not load
    from gptscale.runtime.monitor import JsonlSink

    out: dict[str, Any] = {"kind": kind, "run_dir": str(run_dir),
                           "tensorboard": f"tensorboard --logdir {run_dir / 'tb'}"}
    if kind == "finetune":
        f = run_dir / METRICS_FILE
        if f.is_file():
            out["metrics"] = json.loads(f.read_text())
        return out
    f = run_dir / JsonlSink.filename
    if f.is_file():  # the last step's records (training and validation) merged
        recs = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
        last = max((r.get("step", 0) for r in recs), default=None)
        if last is not None:
            out["metrics"] = {k: v for r in recs if r.get("step") == last for k, v in r.items()}
    tag = checkpoint.latest_tag(run_dir / checkpoint.CHECKPOINTS)
    if tag:
        out["checkpoint"] = str(run_dir / checkpoint.CHECKPOINTS / tag)
    return out


def export_dist_env() -> None:
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* for this task (this process only: each task is its own process)."""
    drop_stale(os.environ)  # values exported from the submitting shell would override the scheduler's
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    setup_env()  # Slurm: from SLURM_PROCID/NTASKS/LOCALID, GPTSCALE_MASTER_ADDR/PORT or first host and job id


class GptscaleJob(submitit.helpers.Checkpointable):
    """`python -m gptscale <kind> <argv>` on every task of the allocation; returns rank 0's results."""

    def __init__(self, kind: str, argv: list[str], run_dir: str | Path):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.argv, self.run_dir = kind, list(argv), Path(run_dir)

    def __call__(self) -> dict[str, Any] | None:
        apply_env_defaults()  # NCCL, OMP_NUM_THREADS, DS_ACCELERATOR where unset: before torch and DeepSpeed load
        export_dist_env()
        if self.kind == "pretrain":  # lazy: torch and DeepSpeed load only now, after the environment is set
            from gptscale.pretrain import cli
        else:
            from gptscale.finetune import cli
        rc = cli(self.argv)
        if rc != 0:
            env = submitit.JobEnvironment()
            raise JobFailed(f"gptscale {self.kind} exited {rc} on rank {os.environ.get('RANK')}: its error is at the "
                            f"end of {env.paths.stderr}")
        if os.environ.get("RANK", "0") != "0":
            return None
        return read_result(self.kind, self.run_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 after SIGUSR2 (the training loop has saved its checkpoint by then):
        resubmit the same job; it resumes from `latest` (pre-training) or starts again (fine-tuning)."""
        print(f"launcher: requeueing {self.kind} job; run dir {self.run_dir}", flush=True)
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def __repr__(self) -> str:
        return f"GptscaleJob({self.kind}, run_dir={self.run_dir})"
