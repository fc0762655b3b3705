"""Load DeepSpeed checkpoints without unpickling arbitrary objects.

DeepSpeed's own loaders call ``torch.load(..., weights_only=False)`` (its ``TorchCheckpointEngine``,
``deepspeed.utils.zero_to_fp32``): a crafted ``.pt`` file runs any code it likes when loaded. Here every
checkpoint file goes through :func:`safe_torch_load`, i.e. ``torch.load(weights_only=True)`` with an explicit
allowlist (:data:`ALLOWED`) of the few non-tensor classes real DeepSpeed checkpoints hold. Anything else is
refused with an :class:`UnsafeCheckpointError` naming the file and the class.

    sd = safe_torch_load("ckpts/step_00000040/mp_rank_00_model_states.pt")
    install(engine); engine.load_checkpoint("runs/x/checkpoints", tag="step_00000040")   # model + optimizer
    weights = fp32_state_dict("runs/x/checkpoints", tag="step_00000040")                # any ZeRO stage, no dist

The allowlist was taken from real checkpoints written by DeepSpeed 0.19.8 with gptscale's engine on 2 ranks:
ZeRO stages 0/1/2/3 x fp32/bf16/fp16 (fp16 with its DynamicLossScaler) and the optimizer/parameter offload
configs (DeepSpeedCPUAdam), plus the per-rank RNG files. Tensors, storages, dtypes and torch's tensor-rebuild
functions are on torch's own weights-only allowlist already. gptscale's LambdaLR state holds no objects
(its lambdas are saved as None); a DeepSpeed-built scheduler or optimizer might, and would be refused until
its classes are added here.

DeepSpeed code that calls ``torch.load`` itself (zero_to_fp32, ds_to_universal, universal-checkpoint loading)
runs inside :func:`safe_loading`, which binds ``torch.load`` to safe_torch_load for the duration.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import pickle
import pickletools
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from gptscale.errors import GptscaleError

ALLOWED: tuple[str, ...] = (
    "collections.OrderedDict",                               # module / param_shapes dicts
    "torch.Size",                                            # param_shapes
    "deepspeed.runtime.zero.config.ZeroStageEnum",           # ZeRO 1/2/3 optimizer states: zero_stage
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",         # fp32/bf16 ZeRO optimizer states (static scale)
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",  # fp16 ZeRO optimizer states
    "deepspeed.utils.tensor_fragment.fragment_address",      # ZeRO 1/2 param_slice_mappings
)
"""Dotted names of the classes a DeepSpeed checkpoint file may contain besides tensors and builtins."""

_TORCH_LOAD = torch.serialization.load  # the real loader, whatever torch.load is bound to inside safe_loading()


class UnsafeCheckpointError(GptscaleError, pickle.UnpicklingError):
    """A checkpoint file that needs a class outside the allowlist (or is not a torch checkpoint at all)."""


@functools.cache
def allowed_globals() -> tuple[Any, ...]:
    """The objects named in ALLOWED."""
    objs = []
    for dotted in ALLOWED:
        module, _, name = dotted.rpartition(".")
        objs.append(getattr(importlib.import_module(module), name))
    return tuple(objs)


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", **kwargs: Any) -> Any:
    """``torch.load(path, weights_only=True)`` with the DeepSpeed allowlist; other kwargs (``mmap``) pass through.

    A ``weights_only`` argument from the caller is ignored: this function never unpickles freely.
    Raises UnsafeCheckpointError naming the file and the class it would have needed.
    """
    kwargs.pop("weights_only", None)
    try:
        with torch.serialization.safe_globals(list(allowed_globals())):
            return _TORCH_LOAD(path, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(_refusal(path, e)) from None


def _refusal(path: str | os.PathLike, err: Exception) -> str:
    names = _unsafe_globals(path)
    if not names:
        found = re.findall(r"(?:GLOBAL|global) ([\w.]+)", str(err))
        names = sorted(set(found))
    what = f"the global(s) {', '.join(names)}" if names else f"content torch refuses ({str(err).splitlines()[0]})"
    return (f"{os.fspath(path)}: refused to load: it needs {what}, which is not on gptscale.runtime.safeload.ALLOWED "
            f"(the classes DeepSpeed checkpoints contain). Never load an untrusted file with weights_only=False; "
            f"if the file is trusted and the class only holds data, add it to ALLOWED.")


def _unsafe_globals(path: str | os.PathLike) -> list[str]:
    """Globals the file needs beyond torch's allowlist and ours, found without unpickling anything."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # zip-format torch files
    except Exception:  # legacy torch format or a bare pickle: scan its opcodes ourselves
        needed = [n for n in _scan_pickle_globals(path) if not n.startswith(("torch.", "builtins."))]
    return sorted(n for n in set(needed) if n not in ALLOWED)


def _scan_pickle_globals(path: str | os.PathLike, max_pickles: int = 8) -> list[str]:
    """Names imported by the pickles at the start of a file (best effort: stops at the first non-pickle)."""
    names: list[str] = []
    try:
        with open(path, "rb") as f:
            for _ in range(max_pickles):
                strings: list[str] = []
                for op, arg, _pos in pickletools.genops(f):
                    if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                        strings.append(arg)
                    elif op.name == "GLOBAL":
                        names.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # raw tensor data after the pickles, or a truncated file
        pass
    return names


# ------------------------------------------------------------------------------------ DeepSpeed engine


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's TorchCheckpointEngine whose ``load`` is :func:`safe_torch_load`; saving is unchanged.

    ``loaded`` lists every path read through it (for audits and tests).
    """

    def __init__(self, config_params: Any = None) -> None:
        super().__init__(config_params)
        self.name = "SafeCheckpointEngine"
        self.loaded: list[str] = []

    def load(self, path: str, map_location: Any = None) -> Any:
        state = safe_torch_load(path, map_location=map_location)
        self.loaded.append(str(path))
        return state


def install(engine: Any) -> SafeCheckpointEngine:
    """Make ``engine.load_checkpoint`` read every file through :func:`safe_torch_load`; returns the new engine.

    DeepSpeed's engine reads the model-states files (``SDLoaderFactory``) and the ZeRO optimizer-state
    files (``_get_all_zero_checkpoint_state_dicts``) through ``engine.checkpoint_engine``; the ZeRO
    optimizers have no checkpoint engine of their own. Two paths bypass it and call ``torch.load``
    directly: ZeRO-3 with ``load_optimizer_states=False`` (weights rebuilt by ``zero_to_fp32``) and
    universal checkpoints (``load_universal``); so ``load_checkpoint`` is also wrapped to run inside
    :func:`safe_loading`, and refuses the ZeRO-3 case where DeepSpeed would ignore the tag. Saving is
    unchanged (same serialization setting). Idempotent; refuses engines with another checkpoint writer.
    """
    current = getattr(engine, "checkpoint_engine", None)
    if isinstance(current, SafeCheckpointEngine):
        return current
    if current is not None and type(current) is not TorchCheckpointEngine:
        raise TypeError(f"install(): this DeepSpeed engine uses {type(current).__name__} (a 'checkpoint.writer' or "
                        f"datastates config); only the default TorchCheckpointEngine can be replaced safely")
    safe = SafeCheckpointEngine(getattr(engine, "_config", None))
    engine.checkpoint_engine = safe
    original = engine.load_checkpoint

    @functools.wraps(original)
    def load_checkpoint(*args: Any, **kwargs: Any) -> Any:
        _refuse_zero3_latest_bug(engine, inspect.signature(original).bind(*args, **kwargs).arguments)
        with safe_loading():
            return original(*args, **kwargs)

    engine.load_checkpoint = load_checkpoint
    return safe


def _refuse_zero3_latest_bug(engine: Any, call: dict[str, Any]) -> None:
    """DeepSpeed 0.19.8 at ZeRO-3 with load_optimizer_states=False rebuilds the weights with
    ``get_fp32_state_dict_from_zero_checkpoint(load_dir)`` *without the tag*: it silently loads the checkpoint
    named in ``latest``, whatever tag was asked for. Refuse that case instead of loading the wrong weights."""
    tag, load_dir = call.get("tag"), call.get("load_dir")
    if tag is None or call.get("load_optimizer_states", True) or getattr(engine, "has_moe_layers", False):
        return
    if not engine.zero_optimization_partition_weights():
        return
    latest = Path(load_dir) / "latest"
    current = latest.read_text().strip() if latest.is_file() else None
    if current != str(tag):
        raise ValueError(f"load_checkpoint({load_dir!r}, tag={tag!r}, load_optimizer_states=False) at ZeRO-3 would "
                         f"load {current or 'nothing'!r} (DeepSpeed reads {latest} on this path, ignoring the tag); "
                         f"load with load_optimizer_states=True, or load fp32_state_dict(load_dir, tag) into the "
                         f"module before deepspeed.initialize")


# ------------------------------------------------------------------------------------ safe_loading

_LOAD_LOCK = threading.RLock()


def _load_compatible(f: Any, map_location: Any = None, **kwargs: Any) -> Any:
    """torch.load's signature, safe_torch_load's behaviour (DeepSpeed passes weights_only=False: ignored)."""
    return safe_torch_load(f, map_location=map_location, **kwargs)


@contextlib.contextmanager
def safe_loading() -> Iterator[None]:
    """Within the block every ``torch.load(...)`` call goes through :func:`safe_torch_load`.

    For DeepSpeed code that calls ``torch.load(weights_only=False)`` itself instead of its checkpoint engine:
    ``zero_to_fp32``, ``ds_to_universal`` (in-process workers: ``num_extract_workers=1``, or fork-started
    ones, which inherit the binding) and universal-checkpoint loading. Rebinds ``torch.load`` and restores
    it on exit; a lock serialises threads that enter the block (other threads' loads are made safe too).
    """
    with _LOAD_LOCK:
        saved = torch.load
        torch.load = _load_compatible
        try:
            yield
        finally:
            torch.load = saved


# --------------------------------------------------------------------------------- consolidated weights


def fp32_state_dict(checkpoint_dir: str | Path, tag: str) -> dict[str, torch.Tensor]:
    """Consolidated fp32 weights of a DeepSpeed checkpoint of any ZeRO stage, in a plain process.

    ZeRO 1-3: DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint`` (run inside safe_loading(), its
    progress prints sent to stderr). ZeRO-0 has no optimizer-state shards: the model
    states file holds the full module (fp32 training) or the module in 16 bits plus the fp32 master weights
    in ``optimizer["fp32_groups"]`` (bf16/fp16), mapped back to names by gptscale's parameter-group rule and
    checked against the 16-bit module. Tied parameters (``lm_head.weight`` is ``wte.weight``) come back under
    both names.
    """
    checkpoint_dir = Path(checkpoint_dir)
    tag_dir = checkpoint_dir / tag
    if not tag_dir.is_dir():
        raise FileNotFoundError(f"{tag_dir}: no such checkpoint folder")
    model_files = sorted(tag_dir.glob("*model_states.pt"))
    if not model_files:
        raise FileNotFoundError(f"{tag_dir}: no *model_states.pt file; not a DeepSpeed checkpoint")
    states = safe_torch_load(model_files[0], mmap=True)
    stage = int(((states.get("ds_config") or {}).get("zero_optimization") or {}).get("stage", 0))
    shards = list(tag_dir.glob("*_optim_states.pt"))
    if stage == 0 and not shards:
        return _stage0_state_dict(states, model_files[0])
    if not shards:
        raise FileNotFoundError(f"{tag_dir}: ZeRO-{stage} checkpoint without its *_optim_states.pt shards; the "
                                f"checkpoint is incomplete")
    with safe_loading(), contextlib.redirect_stdout(sys.stderr):
        sd = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    for alias, target in (states.get("shared_params") or {}).items():
        if alias not in sd and target in sd:
            sd[alias] = sd[target]
    return dict(sd)


def _stage0_state_dict(states: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    module: dict[str, torch.Tensor] = states["module"]
    if all(v.dtype == torch.float32 for v in module.values() if v.is_floating_point()):
        return _with_aliases({k: v.clone() for k, v in module.items()}, module)
    groups = (states.get("optimizer") or {}).get("fp32_groups")
    if groups is None:
        raise ValueError(f"{path}: 16-bit ZeRO-0 checkpoint without optimizer fp32_groups; cannot recover fp32 "
                         f"weights")
    aliases = _alias_map(module)
    names = [k for k in module if k not in aliases and k not in set(states.get("buffer_names") or [])]
    ordered = [n for n in names if module[n].ndim >= 2] + [n for n in names if module[n].ndim < 2]
    flat = [t for g in groups for t in g]
    if len(flat) != len(ordered):
        raise ValueError(f"{path}: {len(flat)} fp32 master tensors for {len(ordered)} parameters; the checkpoint "
                         f"was not written with gptscale's parameter groups")
    out: dict[str, torch.Tensor] = {}
    for name, master in zip(ordered, flat):
        lp = module[name]
        if master.shape != lp.shape or not torch.equal(master.to(lp.dtype), lp):
            raise ValueError(f"{path}: fp32 master weights do not match parameter {name!r} (parameter-group order "
                             f"differs from gptscale's engine.param_groups)")
        out[name] = master.clone()
    out.update({k: (v.float() if v.is_floating_point() else v).clone()  # buffers
                for k, v in module.items() if k not in out and k not in aliases})
    return _with_aliases(out, module)


def _alias_map(module: dict[str, torch.Tensor]) -> dict[str, str]:
    """Keys whose tensor is the same storage, offset and shape as an earlier key (tied weights) -> that key."""
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for k, v in module.items():
        ident = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if ident in seen and v.numel() > 0:
            aliases[k] = seen[ident]
        else:
            seen.setdefault(ident, k)
    return aliases


def _with_aliases(out: dict[str, torch.Tensor], module: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for alias, target in _alias_map(module).items():
        out[alias] = out[target]
    return {k: out[k] for k in module}  # the module's key order
