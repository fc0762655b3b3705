"""Typed values for dataclass configs: field docstrings, value coercion with clear errors, unknown-key hints,
config files and ``--section.key=value`` flags.

Generic over any dataclass (gptscale.config's sections, the launcher's ExecutorOptions); no gptscale types
but the errors' base class.
"""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
import json
import os
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from gptscale.errors import GptscaleError


class ConfigError(GptscaleError, ValueError):
    """A bad key or value in a config file or on the command line."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Convert a file or CLI value to the field's type, or raise naming key, source and type."""
    def bad(extra: str = "") -> ConfigError:
        return ConfigError(
            f"{where}: {key}={value!r} is not a valid {type_name(tp)}{extra}"
        )

    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, where)
            except ConfigError:
                pass
        raise bad()
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        raise bad(f"; choose one of {list(choices)}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if tp in (bool, int, float, str):
        out = _scalar(value, tp)
        if out is None:
            raise bad(" (use true or false)" if tp is bool else "")
        return out
    return value


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        for parse in (lambda v: int(v.replace("_", "")), float):  # "1_000", "1e6"
            try:
                f = parse(value)
            except ValueError:
                continue
            if float(f).is_integer():
                return int(f)
    return None


def _scalar(value: Any, tp: type) -> Any:
    """`value` as a bool, int, float or str (numbers and words from files and flags); None if it is not one."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool:
        if isinstance(value, bool):
            return value
        words = ("true", "1", "yes", "on", "false", "0", "no", "off")
        return value.lower() in words[:4] if isinstance(value, str) and value.lower() in words else None
    if tp is int:
        return _int(value)
    if tp is float:
        if number:
            return float(value)
        try:
            return float(value) if isinstance(value, str) else None
        except ValueError:
            return None
    if isinstance(value, str):
        return value
    return str(value) if number else None


def unknown_key(key: str, valid: list[str], where: str, prefix: str = "") -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(prefix + c) for c in close)}?" if close else ""
    return ConfigError(
        f"{where}: unknown key {prefix + key!r}{hint} (valid keys: {', '.join(prefix + v for v in valid)})"
    )


# ------------------------------------------------------------------------------- files and flags

Layer = dict[str, dict[str, tuple[Any, str]]]
"""{section: {key: (raw value, where it came from)}}: one source of settings (a file, the flags)."""


def flag_value(argv: list[str], i: int) -> tuple[str, str, int]:
    """(flag name, value, index of the last argument used) of ``--name=value`` or ``--name value`` at argv[i]."""
    name, eq, value = argv[i].partition("=")
    if eq:
        return name, value, i
    if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
        raise ConfigError(f"{name} needs a value: {name}=VALUE")
    return name, argv[i + 1], i + 1


def read_config_file(path: str | Path, sections: list[str]) -> Layer:
    """Parse a YAML or JSON config file of `sections` into a Layer."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ConfigError(f"{path}: cannot parse: {e}") from e
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections ({', '.join(sections)})")
    out: Layer = {}
    for section, body in data.items():
        if section not in sections:
            raise unknown_key(str(section), sections, str(path))
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping of key: value")
        out[section] = {str(k): (v, str(path)) for k, v in body.items()}
    return out


DS_CONFIG_FLAGS = ("--deepspeed_config", "--deepspeed")
"""Flags naming a DeepSpeed config file, synonyms of ``--train.ds_config=FILE``: DeepSpeed's own
``--deepspeed_config FILE``, and HF Trainer's ``--deepspeed FILE``. A bare ``--deepspeed`` (the DeepSpeed
convention "use DeepSpeed") is accepted and dropped: gptscale always trains with DeepSpeed."""


def _ds_config_flag(argv: list[str], i: int, found: list[tuple[str, str]]) -> int:
    """Read a DS_CONFIG_FLAGS flag at argv[i] into `found` (name, file); the index of the last argument used."""
    if argv[i] == "--deepspeed" and (i + 1 >= len(argv) or argv[i + 1].startswith("-")):
        return i  # bare --deepspeed
    name, value, i = flag_value(argv, i)
    found.append((name, value))
    return i


def _merge_ds_config(found: list[tuple[str, str]], overrides: Layer) -> None:
    """Put the DeepSpeed config file flags into the train section, refusing two different files."""
    train = overrides.setdefault("train", {})
    given = found + ([(train["ds_config"][1].removeprefix("flag "), str(train["ds_config"][0]))]
                     if "ds_config" in train else [])
    files = {os.path.normpath(f) for _, f in given}
    if len(files) > 1:
        raise ConfigError("two DeepSpeed config files: " + ", ".join(f"{n}={f}" for n, f in given)
                          + "; give one of them (--deepspeed_config FILE is --train.ds_config=FILE)")
    if "ds_config" not in train:
        name, value = found[-1]
        train["ds_config"] = (value, f"flag {name}")


def parse_overrides(argv: list[str], sections: list[str]) -> tuple[str | None, Layer, list[str]]:
    """Split argv into (--config file, the flag Layer, remaining args).

    Accepts ``--section.key=value`` and ``--section.key value``, and DS_CONFIG_FLAGS (``--deepspeed_config FILE``:
    train.ds_config; a bare ``--deepspeed`` is dropped); arguments without a dot in the flag name
    (e.g. ``--local_rank=0``, ``--task rte``) are returned untouched for the entry point's own parser.
    """
    config_file: str | None = None
    overrides: Layer = {}
    rest: list[str] = []
    ds_files: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        name = argv[i].partition("=")[0]
        if name == "--config":
            _, config_file, i = flag_value(argv, i)
        elif name in DS_CONFIG_FLAGS and "train" in sections:
            i = _ds_config_flag(argv, i, ds_files)
        elif name.startswith("--") and "." in name[2:]:
            _, value, i = flag_value(argv, i)
            section, _, key = name[2:].partition(".")
            if section not in sections:
                raise unknown_key(section, sections, f"flag {name}")
            overrides.setdefault(section, {})[key] = (value, f"flag {name}")
        else:
            rest.append(argv[i])
        i += 1
    if ds_files:
        _merge_ds_config(ds_files, overrides)
    return config_file, overrides, rest


# ------------------------------------------------------------------------------------------ ranges

_OPS = {">": lambda v, b: v > b, ">=": lambda v, b: v >= b, "<": lambda v, b: v < b, "<=": lambda v, b: v <= b}


def check_ranges(obj: Any, section: str, ranges: dict[str, str]) -> None:
    """Refuse a value outside its range: ``{"lr": "> 0", "dropout": ">= 0, < 1"}``; None (an unset optional
    key) passes. The ConfigError names the key, the value and the range (read from the file or flag, so it
    comes before any compute and exits 2)."""
    for key, spec in ranges.items():
        value = getattr(obj, key)
        if value is None:
            continue
        for cond in spec.split(","):
            op, bound = cond.split()
            if not _OPS[op](value, float(bound)):
                err = ConfigError(f"{section}.{key}={value!r} is out of range: it must be {spec.replace(',', ' and')}")
                err.key = key  # build_section names the file or flag it came from
                raise err
