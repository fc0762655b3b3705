"""The keys a DeepSpeed config may hold, taken from the installed DeepSpeed itself, never typed in by hand.

DeepSpeed ignores a top-level key it does not read (`"zero_optimisation"` trains at ZeRO-0 without a word), and
the blocks it reads with its older config objects (activation_checkpointing, flops_profiler, aio, ...) ignore
unknown keys too. So gptscale checks every key of a ds_configs file against this schema first:

- top level: the keys `DeepSpeedConfig` reads (`_initialize_params`, `_do_warning_check`), recorded by running
  them on a dict that notes every lookup (`get`, `in`, `[]`, `.keys()`), plus the two that `deepspeed.initialize`
  reads itself;
- blocks DeepSpeed validates with a pydantic model (MODEL_BLOCKS, and the monitor blocks, which are the fields of
  DeepSpeedMonitorConfig): the model's field names and aliases, nested models (offload_param, ...) recursively;
- the other blocks: the keys DeepSpeed's reader looks up inside them, recorded the same way (one level deep;
  what lies below is not checked). optimizer/scheduler are not looked into: their `params` are the
  constructor's keyword arguments, read only once a `type` is set.

    schema()                        # {"zero_optimization": {"stage": None, "offload_param": {...}, ...}, ...}
    unknown_key_message(cfg, where) # None, or "<where>: unknown DeepSpeed key 'x' (did you mean 'y'?)"
    unknown_key_problems(cfg)       # every such key, one line each (engine.check_ds_config lists them all)
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Union

Schema = dict[str, Union["Schema", None]]
"""Key -> the schema of its block, or None where the value is not checked (a scalar, or a free-form block)."""

MODEL_BLOCKS = {
    "zero_optimization": "deepspeed.runtime.zero.config:DeepSpeedZeroConfig",
    "bf16": "deepspeed.runtime.precision_config:DeepSpeedBF16Config",
    "bfloat16": "deepspeed.runtime.precision_config:DeepSpeedBF16Config",  # the old name, still read
    "fp16": "deepspeed.runtime.precision_config:DeepSpeedFP16Config",
    "comms_logger": "deepspeed.comm.config:CommsLoggerConfig",
    "compile": "deepspeed.compile.config:CompileConfig",
    "hybrid_engine": "deepspeed.runtime.config:HybridEngineConfig",
    "tensor_parallel": "deepspeed.runtime.tensor_parallel.config:TPTrainingConfig",
    "weight_quantization": "deepspeed.inference.config:WeightQuantConfig",
    "timers.throughput": "deepspeed.utils.config:DeepSpeedThroughputTimerConfig",
}
"""Dotted path of a block -> the pydantic class DeepSpeed builds from it (deepspeed/runtime/config.py)."""
MONITOR_MODEL = "deepspeed.monitor.config:DeepSpeedMonitorConfig"
"""Its fields are the top-level monitor blocks (tensorboard, wandb, csv_monitor, comet)."""
FREE_BLOCKS = ("optimizer", "scheduler")
"""Blocks whose inner keys are not checked (DeepSpeed reads `params` only once `type` is set)."""
READ_BY_INITIALIZE = ("sequence_parallel_size", "data_parallel_size")
"""Top-level keys `deepspeed.initialize` reads itself (deepspeed/__init__.py), outside DeepSpeedConfig."""
DOCS = "https://www.deepspeed.ai/docs/config-json/"


class _Recorder(dict):
    """A dict that notes every key looked up in it (DeepSpeed's readers use get, in, [] and .keys())."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.seen: set[str] = set()

    def __bool__(self) -> bool:  # `if param_dict and KEY in param_dict.keys()`: read as if it held something
        return True

    def get(self, key, default=None):
        self.seen.add(key)
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        self.seen.add(key)
        return super().__contains__(key)

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)

    def keys(self):
        return _RecordedKeys(self)

    def __copy__(self) -> _Recorder:  # DeepSpeedConfig copies its dict first: keep recording into this one
        return self


class _RecordedKeys(list):
    def __init__(self, rec: _Recorder):
        super().__init__(dict.keys(rec))
        self.rec = rec

    def __contains__(self, key) -> bool:
        return key in self.rec


def _reads(block: str | None = None) -> set[str]:
    """The keys DeepSpeedConfig looks up (_initialize_params, then _do_warning_check) at the top level (block None)
    or inside `block`. A reader stops at its first error (a value it cannot use); what it read before counts."""
    from deepspeed.runtime.config import DeepSpeedConfig

    inner = _Recorder()
    top = _Recorder({block: inner} if block else {})
    cfg = DeepSpeedConfig.__new__(DeepSpeedConfig)  # no __init__: no process group, no batch-size checks
    cfg.world_size, cfg.global_rank, cfg._param_dict = 1, 0, top
    for reader in ("_initialize_params", "_do_warning_check"):
        with contextlib.suppress(Exception):  # an empty block that a reader refuses
            getattr(cfg, reader)(*([top] if reader == "_initialize_params" else []))
    return {k for k in (inner if block else top).seen if isinstance(k, str)}


def _load(spec: str) -> type | None:
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # another DeepSpeed version: that block is then not looked into
        return None


def _model_class(annotation: Any) -> type | None:
    """The DeepSpeed config model inside a field's annotation (Optional[Model], Model), else None."""
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel

    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, DeepSpeedConfigModel):
            return t
    return None


def _field_names(name: str, field: Any) -> Iterator[str]:
    yield name
    for alias in (field.alias, field.validation_alias):
        for key in (alias, *getattr(alias, "choices", ())):  # a plain alias, or pydantic's AliasChoices
            if isinstance(key, str):
                yield key


def model_schema(cls: type) -> Schema:
    """A pydantic model's keys: every field by name and by alias (DeepSpeed's models populate by both)."""
    out: Schema = {}
    for name, field in cls.model_fields.items():
        sub = _model_class(field.annotation)
        inner = model_schema(sub) if sub is not None else None
        out.update(dict.fromkeys(_field_names(name, field), inner))
    return out


@functools.cache
def schema() -> Schema:
    """Every key the installed DeepSpeed knows, as a tree (see the module docstring for where each comes from)."""
    out: Schema = {k: None for k in (*_reads(), *READ_BY_INITIALIZE)}
    monitor = _load(MONITOR_MODEL)
    models = {path: _load(spec) for path, spec in MODEL_BLOCKS.items()}
    if monitor is not None:
        models.update({k: _model_class(f.annotation) for k, f in monitor.model_fields.items()})
    for key in out:
        if key in FREE_BLOCKS or key in models:
            continue
        inner = _reads(key)
        if inner:
            out[key] = {k: None for k in inner}
    for path, cls in models.items():
        *parents, last = path.split(".")
        node = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node and cls is not None:
            node[last] = model_schema(cls)
    return out


def size(tree: Schema | None = None) -> int:
    """How many keys the schema holds, nested ones included."""
    tree = schema() if tree is None else tree
    return sum(1 + (size(v) if v else 0) for v in tree.values())


def removed_keys() -> tuple[dict[str, str], dict[str, str]]:
    """DeepSpeed's own table of removed top-level and zero_optimization keys -> its message (may be absent)."""
    mod = importlib.import_module("deepspeed.runtime.config")
    return (getattr(mod, "_REMOVED_TOP_LEVEL_CONFIG_KEYS", {}), getattr(mod, "_REMOVED_ZERO_CONFIG_KEYS", {}))


def unknown_keys(cfg: Mapping[str, Any], tree: Schema, prefix: str = "") -> Iterator[tuple[str, Schema]]:
    """(dotted key, the schema of its block) for every key of `cfg` that `tree` does not hold, depth first.
    Keys starting with '_' are documentation and skipped."""
    for key, value in cfg.items():
        if not isinstance(key, str) or key.startswith("_"):
            continue
        if key not in tree:
            yield prefix + key, tree
        elif isinstance(value, Mapping) and tree[key]:
            yield from unknown_keys(value, tree[key], f"{prefix}{key}.")


def nearest_keys(path: str, block: Schema) -> list[str]:
    """The valid keys `path` was most likely meant to be: the closest spelling in its block (difflib), else the
    key itself in the (at most 3) sub-blocks that hold it (a ZeRO key put at the top level); else none."""
    parent, _, key = path.rpartition(".")
    near = difflib.get_close_matches(key, sorted(block), n=1)
    homes = sorted(f"{name}.{key}" for name, sub in block.items() if sub and key in sub)
    found = near or (homes if len(homes) <= 3 else [])
    return [(parent + "." if parent else "") + k for k in found]


def unknown_key_problems(cfg: Mapping[str, Any]) -> list[str]:
    """One line per key DeepSpeed does not know or removed (with the nearest valid key), in file order."""
    import deepspeed

    out = []
    removed_top, removed_zero = removed_keys()
    for key in cfg:
        if key in removed_top:
            out.append(f"DeepSpeed key {key!r} was removed from DeepSpeed: {removed_top[key]}")
    zero = cfg.get("zero_optimization")
    for key in zero if isinstance(zero, Mapping) else ():
        if key in removed_zero:
            out.append(f"DeepSpeed key 'zero_optimization.{key}' was removed: {removed_zero[key]}")
    for path, block in unknown_keys(cfg, schema()):
        if path in removed_top or (path.startswith("zero_optimization.") and path.partition(".")[2] in removed_zero):
            continue
        near = nearest_keys(path, block)
        parent = path.rpartition(".")[0]
        hint = (f"did you mean {' or '.join(map(repr, near))}?" if near else
                f"not a key DeepSpeed {deepspeed.__version__} reads{' in ' + parent if parent else ''}: remove it; "
                f"the valid keys: {DOCS}")
        out.append(f"unknown DeepSpeed key {path!r} ({hint})")
    return out


def unknown_key_message(cfg: Mapping[str, Any], where: str) -> str | None:
    """The message for the first key DeepSpeed does not know (with the nearest valid key), or None."""
    problems = unknown_key_problems(cfg)
    return f"{where}: {problems[0]}" if problems else None
