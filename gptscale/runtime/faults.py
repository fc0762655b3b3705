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
- ``poison_weights_at_step=N``: right before the checkpoint of step N, rank 0 sets one element of the first
  weight it holds to inf (a weight gone non-finite that the loss has not shown yet).
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
HOOKS = ("nan_micro", "kill_after_checkpoint", "preempt_at_step", "preempt_wait_at_step",
         "kill_at", "kill_job_at", "poison_weights_at_step")
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


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc), children first."""
    parent_of: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent_of[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        kids = [c for c, p in parent_of.items() if p == cur]
        out += kids
        todo += kids
    return out


def kill_tree(pids: list[int]) -> None:
    """SIGSTOP every other process first (so none reacts to another's death), then SIGKILL them all, this
    process last."""
    others = [p for p in pids if p != os.getpid()]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in others:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    if os.getpid() in pids:
        os.kill(os.getpid(), signal.SIGKILL)


def kill_group() -> None:
    """SIGKILL the whole job at once: this process's group and, when started by a launcher (torchrun puts each
    rank in a session of its own; deepspeed does not), the launcher and every rank it started."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        parent = ""
    if any(name in parent for name in ("torch.distributed.run", "torchrun", "deepspeed")):
        kill_tree([os.getppid(), *children(os.getppid())])  # this process among them, killed last
    os.killpg(os.getpgid(0), signal.SIGKILL)


def after_checkpoint(step: int, rank: int) -> None:
    """``kill_after_checkpoint``: rank 0 kills the job right after checkpoint `step` is complete."""
    if rank == 0 and _int("kill_after_checkpoint") == step:
        kill_group()


def poison_weights(module, step: int, rank: int) -> None:
    """``poison_weights_at_step``: rank 0 writes inf into its first non-empty weight before checkpoint `step`."""
    if rank == 0 and _int("poison_weights_at_step") == step:
        import torch  # lazy: the shard writer uses this module too

        with torch.no_grad():
            for _, p in module.named_parameters():
                t = p.ds_tensor if hasattr(p, "ds_tensor") else p.data
                if t.numel():
                    t.view(-1)[0] = float("inf")
                    return


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
