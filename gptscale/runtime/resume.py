"""What a resumed pre-training run may change, and how a change takes effect.

A checkpoint carries the run config it was written with. On resume every key is compared with the config
given now:

- FIXED keys cannot take effect on a resume (the weights' shape, the data order the saved position belongs
  to, the RNG and optimizer state): a change is an error naming the key, both values and the way out.
- APPLIED keys take effect from the resumed step: the schedule's peak lr, decay, warm-up and length, the
  optimizer's betas/eps/weight decay (restored with the optimizer state, so re-applied here), clipping.
- Every other key (intervals, trackers, keep_last, ...) is read afresh anyway.

The run's config.yaml is rewritten with what is in effect, headed by one comment line per resume (step,
checkpoint, time, what changed); the same history travels in each checkpoint's gptscale.json.
"""

from __future__ import annotations

import time
from typing import Any

from gptscale.config import RunConfig, to_dict
from gptscale.errors import GptscaleError
from gptscale.runtime.engine import lr_multiplier

FIXED: dict[str, str] = {
    "model": "a checkpoint's shape and architecture are fixed",
    "data.shards": "the saved data position belongs to the saved shard sets",
    "data.seed": "the saved data position belongs to the saved data order",
    "data.seq_len": "the saved data position counts samples of the saved length",
    "data.shuffle_window": "the saved data position belongs to the saved data order",
    "train.seed": "the RNG streams come back from the checkpoint",
    "train.precision": "the optimizer state is restored in the saved precision",
    "train.optimizer": "the optimizer state belongs to the saved optimizer",
}
"""Config keys (or whole sections) a resume cannot change -> why."""
APPLIED = ("train.lr", "train.min_lr", "train.warmup_steps", "train.lr_schedule", "train.max_steps",
           "train.max_tokens", "train.weight_decay", "train.beta1", "train.beta2", "train.eps", "train.grad_clip")
"""Keys that take effect from the resumed step (see apply_hparams)."""


class ResumeError(GptscaleError):
    """A resume that cannot honour the config given."""


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def changes(saved: dict[str, Any], cfg: RunConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved value, value now)} for every key that differs (keys new since the save skipped)."""
    old, new = _flat(saved), _flat(to_dict(cfg))
    return {k: (old[k], v) for k, v in new.items() if k in old and old[k] != v}


def check(meta: dict[str, Any], cfg: RunConfig, zero_stage: int, where: str) -> dict[str, tuple[Any, Any]]:
    """The changes of this resume against checkpoint `meta`; ResumeError on one that cannot take effect."""
    saved = meta.get("config") or {"model": meta.get("model", {})}
    diff = changes(saved, cfg)
    for key, (old, new) in diff.items():
        fixed = next((k for k in FIXED if key == k or key.startswith(k + ".")), None)
        if fixed:
            raise ResumeError(f"--{key}={new} but checkpoint {where} was written with {old!r}: {FIXED[fixed]}. "
                              f"Drop the override (or set it back to {old!r}); to change it, start a new run "
                              f"(another --train.run_dir, --resume none)")
    if meta.get("zero_stage") is not None and meta["zero_stage"] != zero_stage:
        raise ResumeError(f"train.ds_config={cfg.train.ds_config} is ZeRO-{zero_stage} but checkpoint {where} was "
                          f"written at ZeRO-{meta['zero_stage']}: resume with a ZeRO-{meta['zero_stage']} ds_config")
    return diff


def apply_hparams(engine, cfg: RunConfig, total_steps: int) -> None:
    """After a resume: the optimizer's hyper-parameters and the schedule's peak lr as `cfg` says (the loaded
    optimizer and scheduler state carry the saved ones); the schedule's shape already follows `cfg`."""
    t, groups = cfg.train, engine.optimizer.param_groups
    for i, g in enumerate(groups):
        if "betas" in g:
            g["betas"] = (t.beta1, t.beta2)
        if "eps" in g:
            g["eps"] = t.eps
        if len(groups) == 2:  # engine.param_groups: [decay, no decay]
            g["weight_decay"] = t.weight_decay if i == 0 else 0.0
    sched = engine.lr_scheduler
    sched.base_lrs = [t.lr] * len(groups)
    mult = lr_multiplier(sched.last_epoch, t.warmup_steps, total_steps, t.min_lr / t.lr, t.lr_schedule)
    for g in groups:
        g["initial_lr"], g["lr"] = t.lr, t.lr * mult
    sched._last_lr = [g["lr"] for g in groups]


def history(meta: dict[str, Any], where: str, step: int, diff: dict[str, tuple[Any, Any]]) -> list[dict[str, Any]]:
    """The checkpoint's resume history plus this resume."""
    changed = {k: [old, new] for k, (old, new) in diff.items()}
    return [*meta.get("resumes", []), {"step": step, "from": where, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                            time.gmtime()),
                                       "changed": changed}]


def header(resumes: list[dict[str, Any]]) -> str:
    """config.yaml's comment lines for a resume history."""
    lines = [f"# config in effect; resumed {len(resumes)} time(s):"] if resumes else []
    for i, r in enumerate(resumes, 1):
        changed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in r["changed"].items()) or "nothing changed"
        lines.append(f"# resume {i}: step {r['step']} from {r['from']} at {r['time']}; {changed}")
    return "".join(line + "\n" for line in lines)
