"""Preemption and time limits: checkpoint at the next step boundary, requeue, exit.

Slurm sends SIGUSR2 before a job's time limit (`#SBATCH --signal=USR2@120`) and on preemption
(`scancel --signal=USR2`, submitit's `job._interrupt()`); NCCL owns SIGUSR1. A signal can land in the middle
of a collective, so the handler only sets a flag. The training loop calls `Preemption.should_stop()` once per
optimizer step: the ranks agree on it (one MAX all-reduce of a scalar), every rank saves the checkpoint
together, then `requeue_and_exit()` puts the job back in the queue and leaves:

- under submitit (Slurm or local executor), by handing the signal to submitit's own handler on rank 0 (it
  pickles the `Checkpointable` job, runs `scontrol requeue` and exits), the other ranks exit and Slurm
  restarts the whole allocation (the local executor restarts its tasks);
- under plain sbatch/srun, rank 0 runs `scontrol requeue $SLURM_JOB_ID` (the script is `--requeue`-able), and
  every rank exits with status 0 so the step does not read as failed;
- outside Slurm (a signal by hand), the run just stops after its checkpoint; rerunning resumes it.

The requeued job resumes from the run directory's `latest` checkpoint (`--resume auto`), exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGUSR2,)
EXIT_REQUEUED = 0


class Preemption:
    """Flags SIGUSR2, agreed across ranks at step boundaries. Fault injection for tests:
    `GPTSCALE_PREEMPT_AT_STEP=N` makes the last rank send itself a real SIGUSR2 at the end of step N;
    `GPTSCALE_PREEMPT_WAIT_AT_STEP=N` makes every rank hold at the end of step N until a signal arrives from
    outside (`scancel --signal=USR2 JOBID`, submitit's `job._interrupt()`; at most 600 s), so a test can
    preempt a run mid-way however fast its steps are."""

    def __init__(self, signals=SIGNALS):
        self.requested = False
        self.signum: int | None = None
        self.previous: dict[int, Callable | int | None] = {}
        self.inject_at = int(os.environ.get("GPTSCALE_PREEMPT_AT_STEP", "0") or 0)
        self.hold_at = int(os.environ.get("GPTSCALE_PREEMPT_WAIT_AT_STEP", "0") or 0)
        for s in signals:
            self.previous[s] = signal.getsignal(s)
            signal.signal(s, self._handler)

    def _handler(self, signum, frame) -> None:
        self.requested, self.signum = True, signum
        print(f"[rank {os.environ.get('RANK', '0')}] caught {signal.Signals(signum).name}: "
              f"will checkpoint at the next step boundary and requeue", file=sys.stderr, flush=True)

    def should_stop(self, step: int, device: torch.device) -> bool:
        """True on every rank when any rank was signalled (a collective: call it on all ranks, once per step)."""
        if self.inject_at and step == self.inject_at:
            self.inject_at = 0
            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            if int(os.environ.get("RANK", "0")) == world - 1:
                os.kill(os.getpid(), signal.SIGUSR2)  # the handler runs before the next bytecode
        if self.hold_at and step == self.hold_at:
            self.hold_at = 0
            print(f"[rank {os.environ.get('RANK', '0')}] GPTSCALE_PREEMPT_WAIT_AT_STEP={step}: holding until a "
                  f"preemption signal arrives", file=sys.stderr, flush=True)
            deadline = time.monotonic() + 600
            while not self.requested and time.monotonic() < deadline:
                time.sleep(0.05)
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item())
        if stop and self.signum is None:
            self.signum = signal.SIGUSR2
        return stop

    def restore(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)

    def requeue_and_exit(self, log: Callable[[str], None] = print) -> None:
        """After the checkpoint is complete on every rank: requeue the Slurm job (rank 0) and exit."""
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        job = os.environ.get("SLURM_JOB_ID")
        prev = self.previous.get(self.signum or signal.SIGUSR2)
        self.restore()
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if os.environ.get("SUBMITIT_EXECUTOR") in ("slurm", "local") and callable(prev):
            if rank == 0:
                local = os.environ.get("SUBMITIT_LOCAL_JOB_ID")
                log(f"preempted: checkpoint saved; submitit requeues job {job or local}")
            # rank 0: submitit pickles the job's checkpoint() (a resubmission that resumes from `latest`),
            # requeues it (`scontrol requeue`; the local executor restarts the tasks) and exits
            prev(self.signum or signal.SIGUSR2, None)
            sys.exit(EXIT_REQUEUED)
        if job and rank == 0:
            # an array task is requeued by its own id (SLURM_ARRAY_JOB_ID_TASK)
            target = (f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
                      if os.environ.get("SLURM_ARRAY_TASK_ID") else job)
            r = subprocess.run(["scontrol", "requeue", target], capture_output=True, text=True, check=False)
            if r.returncode == 0:
                log(f"preempted: checkpoint saved; job {target} requeued (it resumes from the latest checkpoint)")
            else:
                log(f"preempted: checkpoint saved; `scontrol requeue {target}` failed ({r.stderr.strip()}): "
                    f"resubmit the same command to resume (is the job --requeue-able?)")
        elif rank == 0:
            log("stopped by signal: checkpoint saved; run the same command again to resume")
        sys.exit(EXIT_REQUEUED)
