"""The one place where the run config meets DeepSpeed.

train.ds_config names a DeepSpeed JSON: a shipped ds_configs/*.json (DeepSpeed-only settings: ZeRO stage,
offload, buckets) or a user's own, HF Trainer style. Batch sizes, accumulation, clipping, precision, the
optimizer's lr/betas/eps/weight_decay and the LR schedule come from the run config: a value "auto" is filled from
it (as HF Trainer does; ZeRO bucket sizes from model.d_model), an explicit value must agree with it (see
gptscale.runtime.ds_user). gptscale always builds the optimizer (torch AdamW; DeepSpeedCPUAdam, through an
optimizer block it writes itself, only with optimizer offload) and the LR schedule (LambdaLR over lr_multiplier)
itself: the file's optimizer and scheduler blocks are checked, then replaced by what gptscale builds, so a run
trains the same with a user's file as with the shipped config of the same ZeRO settings. Every problem of a
file (an unknown key, a value that conflicts with the run config, a setting DeepSpeed would silently ignore) is
listed in one DSConfigError naming the file, each key, both values and the fix.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import deepspeed
import torch

from gptscale.config import ModelConfig, TrainConfig
from gptscale.errors import GptscaleError
from gptscale.runtime import ds_user
from gptscale.runtime.ds_keys import unknown_key_problems

# Keys the run config owns -> the run-config key that sets them ("auto" or an agreeing value in a file).
RUN_CONFIG_KEYS = {
    "train_batch_size": "train.micro_batch_size / train.grad_accum_steps (global batch is derived)",
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.grad_accum_steps",
    "gradient_clipping": "train.grad_clip",
    "optimizer": "train.lr / train.beta1 / train.beta2 / train.eps / train.weight_decay",
    "scheduler": "train.warmup_steps / train.max_steps / train.min_lr",
    "bf16": "train.precision",
    "bfloat16": "train.precision",
    "fp16": "train.precision",
}


class DSConfigError(GptscaleError, ValueError):
    """A DeepSpeed config file that cannot be used as written."""


def ds_config_path(path: str | Path) -> Path:
    """The file train.ds_config names: the path as given (absolute, or relative to the working directory),
    else, for ``NAME``, ``NAME.json`` or ``ds_configs/NAME.json``, the config of that name shipped with gptscale
    (package data: the same files from any directory, also after ``pip install``)."""
    p = Path(path)
    if p.is_file() or p.is_absolute() or p.parent not in (Path("."), Path("ds_configs")):
        return p
    shipped = importlib.resources.files("gptscale.ds_configs") / (p.name if p.suffix == ".json" else p.name + ".json")
    return Path(str(shipped)) if shipped.is_file() else p


def shipped_ds_configs() -> list[str]:
    return sorted(f.name for f in importlib.resources.files("gptscale.ds_configs").iterdir() if f.name.endswith(".json"))


def load_ds_config(path: str | Path, train: TrainConfig | None = None, world_size: int | None = None,
                   total_steps: int | None = None) -> dict[str, Any]:
    """Read a DeepSpeed JSON (see ds_config_path), drop documentation keys (leading '_'), and check it: alone,
    or with `train` also against the run config (world_size / total_steps: the checks that need them)."""
    path = ds_config_path(path)
    if not path.is_file():
        raise DSConfigError(f"train.ds_config={str(path)!r}: no such file; shipped with gptscale (by name): "
                            f"{', '.join(n.removesuffix('.json') for n in shipped_ds_configs())}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DSConfigError(f"{path}: invalid JSON at line {e.lineno} col {e.colno}: {e.msg}") from None
    if not isinstance(raw, dict):
        raise DSConfigError(f"{path}: the top level must be an object of DeepSpeed keys")
    cfg = _strip_docs(raw)
    check_ds_config(cfg, str(path), train, world_size, total_steps)
    return cfg


def _strip_docs(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_docs(v) for k, v in obj.items() if not k.startswith("_")}
    return obj


def problem_error(where: str, problems: list[str]) -> DSConfigError:
    """One error for every problem of a file: one line for one, a list for several."""
    if len(problems) == 1:
        return DSConfigError(f"{where}: {problems[0]}")
    return DSConfigError(f"{where}: {len(problems)} settings cannot be used as written:\n"
                         + "\n".join(f"  - {p}" for p in problems))


def check_ds_config(cfg: dict[str, Any], where: str, train: TrainConfig | None = None, world_size: int | None = None,
                    total_steps: int | None = None) -> None:
    """Refuse, all in one DSConfigError: keys DeepSpeed does not know (ds_keys: it would ignore them without a
    word), settings DeepSpeed would silently ignore, "auto" where nothing fills it, an optimizer or schedule
    gptscale does not build, and (given `train`) values that conflict with the run config."""
    problems = unknown_key_problems(cfg) + zero_problems(cfg.get("zero_optimization", {}))
    problems += ds_user.structure_problems(cfg)
    if train is not None:
        problems += ds_user.value_problems(cfg, train, world_size, total_steps)
    if problems:
        raise problem_error(where, problems)


def zero_problems(zero: Any) -> list[str]:
    """zero_optimization settings DeepSpeed would ignore without a word (or refuse mid-start)."""
    if not isinstance(zero, dict):
        return [f"zero_optimization={json.dumps(zero)}: must be an object"]
    stage = zero.get("stage", 0)
    if stage == "auto":
        return []  # structure_problems reports it
    if stage not in (0, 1, 2, 3):
        return [f"zero_optimization.stage={stage!r}; use 0, 1, 2 or 3"]
    out = []
    if "offload_param" in zero and stage != 3:
        out.append(f"zero_optimization.offload_param needs stage 3 (DeepSpeed ignores it at stage {stage} without "
                   f"a word); set \"stage\": 3 or remove offload_param")
    if "offload_optimizer" in zero and stage == 0:
        out.append("zero_optimization.offload_optimizer needs stage >= 1; set a ZeRO stage")
    for key in ("offload_param", "offload_optimizer"):
        dev = (zero.get(key) or {}).get("device", "cpu") if key in zero else None
        if dev not in (None, "cpu", "nvme", "none"):
            out.append(f"zero_optimization.{key}.device={dev!r}; use 'cpu' or 'nvme'")
    out += [f"zero_optimization.{key} only applies at stage 3 (stage is {stage}); remove it or set \"stage\": 3"
            for key in zero if key.startswith("stage3_") and stage != 3]
    return out


def offloads_optimizer(ds: dict[str, Any]) -> bool:
    off = ds.get("zero_optimization", {}).get("offload_optimizer")
    return bool(off) and off.get("device", "cpu") != "none"


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


FP16_DEFAULTS = {"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2,
                 "min_loss_scale": 1}
"""Dynamic loss scaling; a file's own fp16 settings (other than enabled) are kept over these."""


def build_ds_config(ds: dict[str, Any], train: TrainConfig, world_size: int,
                    d_model: int | None = None) -> dict[str, Any]:
    """The config DeepSpeed gets: a checked file with the run config's values in place of the keys it owns
    ("auto" or agreeing ones), "auto" ZeRO bucket sizes from d_model, no optimizer or scheduler block (gptscale
    builds both; with optimizer offload it writes the optimizer block DeepSpeedCPUAdam is built from)."""
    dp = world_size  # data-parallel size (no tensor/pipeline parallelism yet)
    global_batch = train.micro_batch_size * train.grad_accum_steps * dp
    if train.global_batch_size is not None and train.global_batch_size != global_batch:
        raise DSConfigError(
            f"train.global_batch_size={train.global_batch_size} but micro_batch_size ({train.micro_batch_size}) x "
            f"grad_accum_steps ({train.grad_accum_steps}) x data-parallel size ({dp}) = {global_batch}; set "
            f"train.grad_accum_steps={max(1, train.global_batch_size // (train.micro_batch_size * dp))} or change the "
            f"world size")
    out = {k: v for k, v in ds.items() if k not in RUN_CONFIG_KEYS}
    if "zero_optimization" in out:
        out["zero_optimization"], problems = ds_user.fill_zero_auto(out["zero_optimization"], d_model)
        if problems:
            raise problem_error(train.ds_config, problems)

    def own(key: str) -> dict[str, Any]:  # a file's precision block, less what the run config sets
        return {k: v for k, v in (ds.get(key) or {}).items() if k != "enabled"}

    out.update(
        train_batch_size=global_batch,
        train_micro_batch_size_per_gpu=train.micro_batch_size,
        gradient_accumulation_steps=train.grad_accum_steps,
        gradient_clipping=train.grad_clip,
        bf16={**own("bfloat16"), **own("bf16"), "enabled": train.precision == "bf16"},
        fp16={**FP16_DEFAULTS, **own("fp16"), "enabled": train.precision == "fp16"},
        steps_per_print=out.get("steps_per_print", 10**9),  # we log ourselves
        wall_clock_breakdown=out.get("wall_clock_breakdown", False),
    )
    if offloads_optimizer(ds):  # DeepSpeedCPUAdam: DeepSpeed builds it from this section
        out["optimizer"] = {"type": "AdamW", "params": {
            "lr": train.lr, "betas": [train.beta1, train.beta2], "eps": train.eps,
            "weight_decay": train.weight_decay}}
        out.setdefault("zero_force_ds_cpu_optimizer", True)
    return out


def model_width(model: torch.nn.Module) -> int | None:
    """model.d_model of the GPT inside `model` (a GPT, or a task model holding one), else None."""
    return next((m.cfg.d_model for m in model.modules() if isinstance(getattr(m, "cfg", None), ModelConfig)), None)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """GPT-1's decay rule: weight matrices and embeddings decay; biases and LayerNorm gains do not."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_multiplier(step: int, warmup: int, total: int, min_ratio: float, schedule: str = "cosine") -> float:
    """Linear warm-up over `warmup` updates, then cosine (or linear) from 1 to `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    return min_ratio + 0.5 * (1.0 - min_ratio) * (1.0 + math.cos(math.pi * progress))


def _adamw(groups: list[dict[str, Any]], train: TrainConfig) -> torch.optim.Optimizer:
    """torch AdamW (fused on CUDA): no DeepSpeed op compile, bit-exact resume at every ZeRO stage."""
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps,
                             weight_decay=train.weight_decay, fused=torch.cuda.is_available() or None)


OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], TrainConfig], torch.optim.Optimizer]] = {"adamw": _adamw}
"""train.optimizer name -> factory(param groups, train config). A new optimizer is one entry here."""


def make_optimizer(groups: list[dict[str, Any]], train: TrainConfig) -> torch.optim.Optimizer:
    if train.optimizer not in OPTIMIZERS:
        raise DSConfigError(f"train.optimizer={train.optimizer!r}: unknown; choose from {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[train.optimizer](groups, train)


def lr_scheduler(opt: torch.optim.Optimizer, train: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of both loops: lr_multiplier over `total_steps` (warm-up, then cosine or linear to min_lr)."""
    min_ratio = train.min_lr / train.lr if train.lr > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_multiplier(s, train.warmup_steps, total_steps, min_ratio, train.lr_schedule))


def build_engine(model: torch.nn.Module, train: TrainConfig, world_size: int, total_steps: int,
                 load_universal: bool = False):
    """deepspeed.initialize with the run config filled into train.ds_config (checked against it first: every
    conflict in one DSConfigError); returns the engine.
    load_universal: the checkpoint to load was converted to DeepSpeed's universal format (elastic resume)."""
    ds = load_ds_config(train.ds_config, train, world_size, total_steps)
    ds = build_ds_config(ds, train, world_size, model_width(model))
    if load_universal:
        ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}
    if train.compile:
        model.compile()  # in place: parameter names and state_dict keys stay as they are
    groups = param_groups(model, train.weight_decay)
    optimizer = None if "optimizer" in ds else make_optimizer(groups, train)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, optimizer=optimizer,
                                           lr_scheduler=lambda opt: lr_scheduler(opt, train, total_steps), config=ds)
    return engine


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The module's complete weights as fp32 CPU tensors, on every rank. A collective under ZeRO-3 (every
    rank must call it: the partitioned parameters are gathered); a plain copy at stages 0-2."""
    module = engine.module
    if engine.zero_optimization_stage() == 3:
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


@contextlib.contextmanager
def evaluating(engine) -> Iterator[None]:
    """Eval mode and no autograd for the block, train mode after (both loops' evaluations)."""
    engine.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        engine.train()


def optimizer_name(engine) -> str:
    """The innermost optimizer class (e.g. AdamW, DeepSpeedCPUAdam) under DeepSpeed's ZeRO wrappers."""
    opt = engine.optimizer
    while hasattr(opt, "optimizer") and opt.optimizer is not opt:
        opt = opt.optimizer
    return type(opt).__name__


def step_stats(engine, precision: str) -> dict[str, float | None]:
    """lr, global gradient norm and (fp16) loss scale after the latest optimizer step."""
    g = engine.get_global_grad_norm()
    scale = None
    if precision == "fp16":
        opt = engine.optimizer
        scale = float(getattr(opt, "cur_scale", getattr(opt, "loss_scale", float("nan"))))
    return {"lr": engine.get_lr()[0], "grad_norm": None if g is None else float(g), "loss_scale": scale}
