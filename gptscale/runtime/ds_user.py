"""A user's own DeepSpeed JSON (the HF Trainer style, "auto" values and all) against the run config.

HF Trainer's rules (transformers.integrations.deepspeed.HfTrainerDeepSpeedConfig), followed here: a value
"auto" is filled from the run config; an explicit value must equal the run config's (else a problem naming
both values, the run-config key and the fix); a key that is absent is not checked. The ZeRO bucket sizes that
HF derives from the hidden size come from model.d_model. Beyond HF, because gptscale builds the optimizer and the
LR schedule itself (the file's blocks are checked, then replaced): the optimizer block must name an Adam that
gptscale builds, and the scheduler block a DeepSpeed schedule of the shape gptscale follows (linear warm-up from
0, then constant, linear to 0 or cosine), with its values.

    problems = structure_problems(cfg)                              # needs nothing but the file
    problems += value_problems(cfg, train, world_size, total_steps)  # the run config; world/steps once known
    zero = fill_zero_auto(cfg["zero_optimization"], d_model)         # bucket sizes from the model width
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

AUTO = "auto"

AUTO_KEYS = (
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
    "fp16.enabled", "bf16.enabled", "bfloat16.enabled", "optimizer.params.lr", "optimizer.params.betas",
    "optimizer.params.eps", "optimizer.params.weight_decay", "scheduler.params.warmup_min_lr",
    "scheduler.params.warmup_max_lr", "scheduler.params.warmup_num_steps", "scheduler.params.total_num_steps",
    "scheduler.params.warmup_min_ratio", "scheduler.params.cos_min_ratio", "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size", "zero_optimization.stage3_param_persistence_threshold")
"""Where "auto" is filled: HF Trainer's keys, plus WarmupCosineLR's two ratios."""

OPTIMIZER_TYPES = {"adamw": ("adamw", "adam")}
"""train.optimizer -> the DeepSpeed optimizer types (lower case) that name what gptscale builds for it."""
OPTIMIZER_FIXED = {"adam_w_mode": True, "bias_correction": True, "amsgrad": False}
"""Optimizer params gptscale's AdamW has one value of (decoupled decay, bias correction, no AMSGrad)."""
OPTIMIZER_FREE = ("torch_adam",)
"""Optimizer params that choose an implementation only: accepted (gptscale picks torch AdamW or CPU Adam)."""

SCHEDULERS = {
    "WarmupLR": ("warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type", "last_batch_iteration"),
    "WarmupDecayLR": ("warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type", "last_batch_iteration",
                      "total_num_steps"),
    "WarmupCosineLR": ("warmup_min_ratio", "warmup_num_steps", "cos_min_ratio", "warmup_type",
                       "last_batch_iteration", "total_num_steps"),
}
"""DeepSpeed schedules of a shape gptscale's follows -> their params."""
SHAPES = {"WarmupLR": "constant after warm-up", "WarmupDecayLR": "linear decay to 0", "WarmupCosineLR": "cosine decay"}

FINETUNE = {"lr": "--finetune.lr={}", "micro_batch_size": "--finetune.micro_batch_size={}",
            "weight_decay": "--finetune.weight_decay={}", "grad_clip": "--finetune.grad_clip={}",
            "grad_accum_steps": "--finetune.batch_size", "warmup_steps": "--finetune.warmup_fraction",
            "max_steps": "--finetune.epochs"}
"""train.* keys that gptscale finetune derives from its finetune section -> the flag to use there."""

FIX = 'set it to "auto" or remove it'


def _js(v: Any) -> str:
    return json.dumps(v)


def _flag(key: str, value: Any) -> str:
    """`--train.KEY=VALUE`, with what to pass to gptscale finetune instead where it derives that key."""
    ft = FINETUNE.get(key)
    return f"--train.{key}={value}" + (f" (gptscale finetune: {ft.format(value)})" if ft else "")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _mismatch(key: str, file_val: Any, run: str, run_val: Any, flag: str | None) -> str:
    fix = f'set it to "auto", remove it, or pass {flag}' if flag else FIX
    return f"{key}={_js(file_val)} but {run}={_js(run_val)}: {fix}"


def _walk(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in obj.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v


def _block(cfg: dict[str, Any], key: str) -> dict[str, Any]:
    v = cfg.get(key)
    return v if isinstance(v, dict) else {}


# ------------------------------------------------------------------------------ what the file alone shows


def structure_problems(cfg: dict[str, Any]) -> list[str]:
    """"auto" where nothing fills it, an optimizer gptscale does not build, a schedule it does not follow."""
    out = [f'{k}="auto": gptscale (like HF Trainer) has no run-config value for it; give a value or remove it'
           for k, v in _walk(cfg) if v == AUTO and k not in AUTO_KEYS]
    return out + _optimizer_structure(_block(cfg, "optimizer")) + _scheduler_structure(_block(cfg, "scheduler"))


def _optimizer_structure(opt: dict[str, Any]) -> list[str]:
    out = []
    types = sorted({t for ts in OPTIMIZER_TYPES.values() for t in ts})
    kind = opt.get("type")
    if kind is not None and str(kind).lower() not in types:
        out.append(f"optimizer.type={_js(kind)}: gptscale builds its own optimizer (train.optimizer: torch AdamW; "
                   f"DeepSpeedCPUAdam with offload_optimizer); set \"type\": \"AdamW\" or remove the optimizer block")
    for key, value in _block(opt, "params").items():
        if key in OPTIMIZER_FIXED and value != OPTIMIZER_FIXED[key]:
            out.append(f"optimizer.params.{key}={_js(value)}: gptscale's AdamW has {key}="
                       f"{_js(OPTIMIZER_FIXED[key])}; set that or remove it")
        elif key not in ("lr", "betas", "eps", "weight_decay", *OPTIMIZER_FIXED, *OPTIMIZER_FREE):
            out.append(f"optimizer.params.{key}: not a setting of the AdamW gptscale builds (lr, betas, eps, "
                       f"weight_decay); remove it")
    return out


def _scheduler_structure(sched: dict[str, Any]) -> list[str]:
    kind = sched.get("type")
    if not sched:
        return []
    if kind not in SCHEDULERS:
        return [f"scheduler.type={_js(kind)}: gptscale runs its own schedule (linear warm-up from 0, then cosine "
                f"or linear decay to train.min_lr), which only {', '.join(SCHEDULERS)} describe; use one of them "
                f"or remove the scheduler block"]
    out = []
    params = _block(sched, "params")
    for key, value in params.items():
        if key not in SCHEDULERS[kind]:
            out.append(f"scheduler.params.{key}: not a {kind} parameter ({', '.join(SCHEDULERS[kind])}); remove it")
        elif key == "warmup_type" and value != "linear":
            out.append(f"scheduler.params.warmup_type={_js(value)}: gptscale warms up linearly; set \"linear\" "
                       f"or remove it")
        elif key in ("warmup_min_lr", "warmup_min_ratio") and value != AUTO and not _same(value, 0):
            out.append(f"scheduler.params.{key}={_js(value)}: gptscale warms up from 0; set it to 0 or \"auto\", "
                       f"or remove it")
        elif key == "last_batch_iteration" and value != -1:
            out.append(f"scheduler.params.last_batch_iteration={_js(value)}: gptscale's schedule resumes from the "
                       f"checkpoint's step; remove it")
    return out


# ---------------------------------------------------------------------------------- against the run config


def value_problems(cfg: dict[str, Any], train: Any, world_size: int | None = None,
                   total_steps: int | None = None) -> list[str]:
    """Every explicit value that differs from the run config's (world_size / total_steps None: not checked)."""
    out = []
    checks = [("train_micro_batch_size_per_gpu", "micro_batch_size"), ("gradient_accumulation_steps",
              "grad_accum_steps"), ("gradient_clipping", "grad_clip")]
    for key, tkey in checks:
        if key in cfg and cfg[key] != AUTO and not _same(cfg[key], getattr(train, tkey)):
            out.append(_mismatch(key, cfg[key], f"train.{tkey}", getattr(train, tkey), _flag(tkey, cfg[key])))
    batch = cfg.get("train_batch_size", AUTO)
    if world_size is not None and batch != AUTO:
        want = train.micro_batch_size * train.grad_accum_steps * world_size
        if not _same(batch, want):
            out.append(f"train_batch_size={_js(batch)} but train.micro_batch_size x train.grad_accum_steps x "
                       f"{world_size} ranks = {want}: {FIX} (the global batch is derived)")
    for key, mode in (("fp16", "fp16"), ("bf16", "bf16"), ("bfloat16", "bf16")):
        on = _block(cfg, key).get("enabled", AUTO)
        if on != AUTO and on is not (train.precision == mode):
            flag = f"--train.precision={mode}" if on else "--train.precision=" + " or ".join(
                p for p in ("fp32", "bf16", "fp16") if p != mode)
            out.append(_mismatch(f"{key}.enabled", on, "train.precision", train.precision, flag))
    return out + _optimizer_values(_block(cfg, "optimizer"), train) + \
        _scheduler_values(_block(cfg, "scheduler"), train, total_steps)


def _optimizer_values(opt: dict[str, Any], train: Any) -> list[str]:
    out = []
    kind = str(opt.get("type", "")).lower()
    known = {t for ts in OPTIMIZER_TYPES.values() for t in ts}  # an unknown type: structure_problems reports it
    if kind in known and kind not in OPTIMIZER_TYPES.get(train.optimizer, ()):
        out.append(f"optimizer.type={_js(opt['type'])} but train.optimizer={_js(train.optimizer)}: remove the "
                   f"optimizer block (gptscale builds train.optimizer's)")
    params = _block(opt, "params")
    want = {"lr": ("train.lr", train.lr, "lr"), "eps": ("train.eps", train.eps, "eps"),
            "weight_decay": ("train.weight_decay", train.weight_decay, "weight_decay"),
            "betas": ("[train.beta1, train.beta2]", [train.beta1, train.beta2], None)}
    for key, (run, value, tkey) in want.items():
        got = params.get(key, AUTO)
        if got == AUTO or _same(got, value):
            continue
        if tkey:
            flag = _flag(tkey, got)
        elif isinstance(got, list) and len(got) == 2:
            flag = f"--train.beta1={got[0]} --train.beta2={got[1]}"
        else:
            flag = None
        out.append(_mismatch(f"optimizer.params.{key}", got, run, value, flag))
    return out


def gptscale_shape(train: Any) -> str:
    """The SHAPES entry of gptscale's schedule (fine-tuning: always linear decay to 0)."""
    if math.isclose(train.min_lr, train.lr):
        return SHAPES["WarmupLR"]
    if train.lr_schedule == "linear":
        return SHAPES["WarmupDecayLR"] if train.min_lr == 0 else "linear decay to train.min_lr"
    return SHAPES["WarmupCosineLR"]


def _shape_fix(kind: str, train: Any) -> str:
    """How to make gptscale's schedule the one `kind` describes, or `kind` the one gptscale runs."""
    flags = {"WarmupLR": [f"--train.min_lr={train.lr}"],
             "WarmupDecayLR": ["--train.lr_schedule=linear"] + (["--train.min_lr=0"] if train.min_lr else []),
             "WarmupCosineLR": ["--train.lr_schedule=cosine"] + (["a train.min_lr below train.lr"]
                                                                  if math.isclose(train.min_lr, train.lr) else [])}
    ours = [k for k, v in SHAPES.items() if v == gptscale_shape(train)]
    alt = f', set "type": {_js(ours[0])}' if ours else ""
    return f"pass {' '.join(flags[kind])}{alt}, or remove the scheduler block"


def _scheduler_values(sched: dict[str, Any], train: Any, total_steps: int | None) -> list[str]:
    kind = sched.get("type")
    if kind not in SCHEDULERS:
        return []  # structure_problems reports it
    out = []
    if SHAPES[kind] != gptscale_shape(train):
        out.append(f"scheduler.type={_js(kind)} ({SHAPES[kind]}) but train.lr_schedule={_js(train.lr_schedule)} "
                   f"with train.min_lr={train.min_lr} and train.lr={train.lr} is {gptscale_shape(train)} "
                   f"(gptscale finetune: always linear decay to 0): {_shape_fix(kind, train)}")
    params = _block(sched, "params")
    ratio = train.min_lr / train.lr
    want = {"warmup_max_lr": ("train.lr", train.lr, "lr"),
            "warmup_num_steps": ("train.warmup_steps", train.warmup_steps, "warmup_steps"),
            "cos_min_ratio": ("train.min_lr / train.lr", ratio, None),
            "total_num_steps": ("the run's steps (train.max_steps, train.max_tokens)",
                                total_steps, "max_steps")}
    for key, (run, value, tkey) in want.items():
        got = params.get(key, AUTO)
        if key not in SCHEDULERS[kind] or got == AUTO or value is None or _same(got, value):
            continue
        flag = _flag(tkey, got) if tkey else (f"--train.min_lr={got * train.lr}"
                                               if isinstance(got, (int, float)) else None)
        out.append(_mismatch(f"scheduler.params.{key}", got, run, value, flag))
    return out


# ------------------------------------------------------------------------------------------------ filling


def fill_zero_auto(zero: dict[str, Any], d_model: int | None) -> tuple[dict[str, Any], list[str]]:
    """zero_optimization with HF's hidden-size rules for "auto" bucket sizes (d = model.d_model): reduce_bucket_size
    d*d, stage3_prefetch_bucket_size 0.9*d*d, stage3_param_persistence_threshold 10*d; and the problems."""
    rules = {"reduce_bucket_size": lambda d: d * d, "stage3_prefetch_bucket_size": lambda d: int(0.9 * d * d),
             "stage3_param_persistence_threshold": lambda d: 10 * d}
    out, problems = dict(zero), []
    for key, rule in rules.items():
        if out.get(key) == AUTO:
            if d_model is None:
                problems.append(f'zero_optimization.{key}="auto" needs the model width (model.d_model), which this '
                                f"model does not carry; give an integer")
            else:
                out[key] = rule(d_model)
    return out, problems
