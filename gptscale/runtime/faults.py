"""Fault injection for the tests: the only place test hooks live, read from one variable.

    GPTSCALE_FAULTS="nan_micro=3,4;kill_after_checkpoint=4"

Each entry is ``name=value``; entries are separated by ``;``. Unset (every user's case), nothing here does
anything. The hooks:

- ``nan_micro=3,4``: the loss of pre-training micro-steps 3 and 4 (counted from 1 in this process) is
  replaced by NaN, on every rank (the non-finite-loss skip path).
- ``kill_after_checkpoint=N``: rank 0 SIGKILLs its whole process group (launcher and every rank) right after
  checkpoint N is complete: a node dying.
- ``preempt_at_step=N``: the last rank sends itself a real SIGUSR2 at the end of step N.
- ``preempt_wait_at_step=N``: every rank holds at the end of step N until a preemption signal arrives from
  outside (``scancel --signal=USR2 JOBID``, submitit's ``job._interrupt()``; at most 600 s), so a test can
  preempt a run mid-way however fast its steps are.
- ``kill_after_shard=SPLIT:N``: ``gptscale shard`` SIGKILLs itself right after shard N of SPLIT is renamed
  into place, before its journal records it: a crash between two atomic writes.
- ``kill_at=LABEL[:N]``: the process SIGKILLs itself the Nth time (default 1st) it passes the labelled point
  ``point(LABEL)``; ``kill_job_at=LABEL[:N]`` SIGKILLs its whole process group there instead (every rank
  and the launcher: the whole job dying at that instant). ``LABELS`` lists every point, so a test can take
  each in turn; code marks a point with ``faults.point("ckpt.after_model_states")``.

An unknown name is an error, so a misspelt hook in a test fails loudly instead of testing nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable

ENV = "GPTSCALE_FAULTS"
HOOKS = ("nan_micro", "kill_after_checkpoint", "preempt_at_step", "preempt_wait_at_step", "kill_after_shard",
         "kill_at", "kill_job_at")
LABELS: dict[str, str] = {}
"""Every labelled kill point: label -> where it is (filled by `label` at import of the module that has it)."""
_passed: dict[str, int] = {}


def spec(env: dict[str, str] | None = None) -> dict[str, str]:
    """{hook: value} from GPTSCALE_FAULTS (empty when unset)."""
    text = (os.environ if env is None else env).get(ENV, "")
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, _, value = part.partition("=")
        if name not in HOOKS:
            raise ValueError(f"{ENV}: unknown fault hook {name!r}; known: {', '.join(HOOKS)}")
        out[name] = value
    return out


def env(**hooks: object) -> dict[str, str]:
    """The environment entry that arms `hooks`, e.g. ``env(nan_micro="2,3")`` (for tests)."""
    return {ENV: ";".join(f"{k}={v}" for k, v in hooks.items())}


def _int(name: str) -> int:
    return int(spec().get(name, "0") or 0)


def nan_micro_steps() -> set[int]:
    """Micro-steps whose loss becomes NaN (``nan_micro``)."""
    return {int(x) for x in spec().get("nan_micro", "").split(",") if x.strip()}


def kill_group() -> None:
    """SIGKILL this process's whole process group (the launcher and every rank with it)."""
    os.killpg(os.getpgid(0), signal.SIGKILL)


def after_checkpoint(step: int, rank: int) -> None:
    """``kill_after_checkpoint``: rank 0 kills the job right after checkpoint `step` is complete."""
    if rank == 0 and _int("kill_after_checkpoint") == step:
        kill_group()


def after_shard(split: str, n_written: int) -> None:
    """``kill_after_shard``: the shard writer kills itself after shard `n_written` of `split`."""
    if spec().get("kill_after_shard") == f"{split}:{n_written}":
        os.kill(os.getpid(), signal.SIGKILL)


def label(name: str, where: str) -> str:
    """Declare the kill point `name` (module level, next to the code that passes it); returns `name`."""
    LABELS[name] = where
    return name


def point(name: str) -> None:
    """A labelled point: ``kill_at`` / ``kill_job_at`` naming it SIGKILL here on its Nth pass."""
    if ENV not in os.environ:
        return
    if name not in LABELS:
        raise ValueError(f"fault point {name!r} was not declared with faults.label")
    _passed[name] = _passed.get(name, 0) + 1
    for hook, kill in (("kill_at", lambda: os.kill(os.getpid(), signal.SIGKILL)), ("kill_job_at", kill_group)):
        want = spec().get(hook)
        if want:
            target, _, nth = want.partition(":")
            if target == name and _passed[name] == int(nth or 1):
                kill()


class PreemptFaults:
    """``preempt_at_step`` / ``preempt_wait_at_step``, each acted on once (Preemption.should_stop calls it)."""

    def __init__(self) -> None:
        self.signal_at = _int("preempt_at_step")
        self.hold_at = _int("preempt_wait_at_step")

    def at_step(self, step: int, rank: int, world: int, requested: Callable[[], bool]) -> None:
        if self.signal_at and step == self.signal_at:
            self.signal_at = 0
            if rank == world - 1:
                os.kill(os.getpid(), signal.SIGUSR2)  # the handler runs before the next bytecode
        if self.hold_at and step == self.hold_at:
            self.hold_at = 0
            print(f"[rank {rank}] {ENV} preempt_wait_at_step={step}: holding until a preemption signal arrives",
                  file=sys.stderr, flush=True)
            deadline = time.monotonic() + 600
            while not requested() and time.monotonic() < deadline:
                time.sleep(0.05)
