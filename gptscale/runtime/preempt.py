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
from collections.abc import Callable

import torch
import torch.distributed as dist

from gptscale.runtime import faults

SIGNALS = (signal.SIGUSR2,)
EXIT_REQUEUED = 0


class Preemption:
    """Flags SIGUSR2, agreed across ranks at step boundaries (test hooks: gptscale.runtime.faults)."""

    def __init__(self, signals=SIGNALS):
        self.requested = False
        self.signum: int | None = None
        self.previous: dict[int, Callable | int | None] = {}
        self.faults = faults.PreemptFaults()
        for s in signals:
            self.previous[s] = signal.getsignal(s)
            signal.signal(s, self._handler)

    def _handler(self, signum, frame) -> None:
        self.requested, self.signum = True, signum
        print(f"[rank {os.environ.get('RANK', '0')}] caught {signal.Signals(signum).name}: "
              f"will checkpoint at the next step boundary and requeue", file=sys.stderr, flush=True)

    def should_stop(self, step: int, device: torch.device) -> bool:
        """True on every rank when any rank was signalled (a collective: call it on all ranks, once per step)."""
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.faults.at_step(step, int(os.environ.get("RANK", "0")), world, lambda: self.requested)
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
