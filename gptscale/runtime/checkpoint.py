"""Checkpoints of a run, the one place that finds, resolves, loads, saves and prunes them.

    RUN_DIR/checkpoints/latest            tag of the newest complete checkpoint (atomic rename, rank 0)
    RUN_DIR/checkpoints/step_00000040/    DeepSpeed's files, gptscale.json (META_FILE), rng_rank{r}.pt

`latest` moves only after every rank has finished writing (barrier), so a kill during a save leaves it on
the previous, complete checkpoint; old checkpoints are pruned only after `latest` has moved.

Lookup: `resolve(path, tag)` turns a run folder, its checkpoints/ folder or a tag folder into
(checkpoints folder, tag); `find(run_dir, resume)` is the resume rule on top of it; `load_model` gives the
checkpoint's fp32 weights in a plain GPT (export, fine-tuning init), `load` restores a DeepSpeed engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from deepspeed.checkpoint import ds_to_universal

from gptscale.config import ModelConfig, RunConfig, from_dict
from gptscale.errors import GptscaleError
from gptscale.files import atomic_write_bytes, atomic_write_json
from gptscale.model import GPT, load_state
from gptscale.runtime.safeload import fp32_state_dict, install, safe_loading, safe_torch_load

META_FILE = "gptscale.json"
"""gptscale's metadata in every checkpoint tag folder: model config, tokenizer, step, tokens, world, stage."""
LATEST = "latest"
TAG_PREFIX = "step_"
CHECKPOINTS = "checkpoints"


class CheckpointError(GptscaleError, FileNotFoundError):
    """A checkpoint that is missing, incomplete or unreadable; the message names the path and what exists."""


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def latest_tag(ckdir: Path) -> str | None:
    """The tag `ckdir/latest` names, or None when there is none."""
    f = Path(ckdir) / LATEST
    tag = f.read_text().strip() if f.is_file() else ""
    return tag or None


def is_tag_dir(p: Path) -> bool:
    """A complete-looking checkpoint folder: gptscale's metadata and DeepSpeed's model states."""
    return (p / META_FILE).is_file() and any(p.glob("*model_states.pt"))


def resolve(path: str | Path, tag: str | None = None) -> tuple[Path, str]:
    """(checkpoints folder, tag) for a run folder, a checkpoints folder (its ``latest``) or a tag folder.

    ``tag`` picks a checkpoint other than the latest; with a tag folder it must name that folder.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    if not p.is_dir():
        raise CheckpointError(f"{p}: expected a run folder, its {CHECKPOINTS}/ folder or a checkpoint tag folder")
    if is_tag_dir(p):
        if tag is not None and tag != p.name:
            raise CheckpointError(f"{p} is checkpoint {p.name!r} but --tag {tag!r} was given")
        return p.parent, p.name
    ckpts = p / CHECKPOINTS if (p / CHECKPOINTS).is_dir() else p
    if tag is None and latest_tag(ckpts) is None:
        tags = sorted(d.name for d in ckpts.iterdir() if d.is_dir() and is_tag_dir(d))
        if ckpts == p and not tags:
            raise CheckpointError(f"{p}: no checkpoint here (neither {CHECKPOINTS}/, a '{LATEST}' file, nor "
                                  f"{META_FILE})")
        raise CheckpointError(f"{ckpts}: no '{LATEST}' file (or an empty one), so no complete checkpoint is "
                              f"recorded" + (f"; pass --tag (present: {', '.join(tags)})" if tags else ""))
    tag = tag if tag is not None else latest_tag(ckpts)
    if not is_tag_dir(ckpts / tag):
        raise CheckpointError(f"{ckpts / tag}: checkpoint {tag!r} is missing or incomplete (no {META_FILE} or "
                              f"*model_states.pt)")
    return ckpts, tag


def find(run_dir: Path, resume: str) -> tuple[Path, str] | None:
    """Which checkpoint to resume from: 'auto' (the run's latest, if any), 'none', or a path to a run dir,
    a checkpoints dir or a tag dir (see `resolve`)."""
    if resume == "none":
        return None
    if resume == "auto":
        ckdir = run_dir / CHECKPOINTS
        tag = latest_tag(ckdir)
        return (ckdir, tag) if tag else None
    try:
        return resolve(resume)
    except CheckpointError as e:
        raise CheckpointError(f"--resume {resume}: {e}") from None


def read_meta(ckdir: Path, tag: str) -> dict[str, Any]:
    """The tag's gptscale.json (CheckpointError naming the file when it is missing or not JSON)."""
    f = ckdir / tag / META_FILE
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{f}: unreadable checkpoint metadata ({type(e).__name__}: {e})") from None


def saved_world_size(ckdir: Path, tag: str) -> int:
    return int(read_meta(ckdir, tag)["world_size"])


def load_model(path: str | Path, tag: str | None = None) -> tuple[GPT, dict[str, Any]]:
    """(GPT in eval mode with the checkpoint's fp32 weights, the checkpoint's gptscale.json + its location),
    in a plain process (no DeepSpeed engine, any ZeRO stage)."""
    ckpts, tag = resolve(path, tag)
    meta = read_meta(ckpts, tag)
    try:
        cfg = from_dict(ModelConfig, meta["model"], where=str(ckpts / tag / META_FILE))
    except (ValueError, KeyError, TypeError) as e:  # missing keys, ConfigError
        raise CheckpointError(f"{ckpts / tag / META_FILE}: unreadable checkpoint metadata "
                              f"({type(e).__name__}: {e})") from None
    model = GPT(cfg)
    load_state(model, fp32_state_dict(ckpts, tag), str(ckpts / tag))
    return model.eval(), {**meta, "checkpoint": str(ckpts / tag), "tag": tag}


# --------------------------------------------------------------------------------------- save / load


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, run_dir: Path, cfg: RunConfig, step: int, client_state: dict[str, Any], zero_stage: int) -> Path:
    """Write checkpoint `step_{step}` on every rank, then move `latest` and prune (rank 0)."""
    ckdir = run_dir / CHECKPOINTS
    tag = tag_for(step)
    rank, world = dist.get_rank(), dist.get_world_size()
    # universal_checkpoint_info: lets DeepSpeed's ds_to_universal convert this checkpoint for another
    # world size (pure data parallelism: no tensor/pipeline-parallel patterns to declare).
    client_state = {**client_state, "universal_checkpoint_info": {}}
    engine.save_checkpoint(str(ckdir), tag=tag, client_state=client_state, save_latest=False)
    buf = io.BytesIO()
    torch.save(rng_state(), buf)
    atomic_write_bytes(ckdir / tag / f"rng_rank{rank}.pt", buf.getvalue())
    if rank == 0:
        atomic_write_json(ckdir / tag / META_FILE, {
            "model": dataclasses.asdict(cfg.model), "tokenizer": cfg.data.tokenizer or None, "step": step,
            "tokens": client_state.get("tokens"), "world_size": world, "zero_stage": zero_stage})
    _barrier()  # every rank has written all its files
    if rank == 0:
        atomic_write_bytes(ckdir / LATEST, tag.encode())
        prune(ckdir, cfg.train.keep_last)
    _barrier()
    return ckdir / tag


def prune(ckdir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints (never the one `latest` names)."""
    keep = latest_tag(ckdir)
    tags = sorted(p.name for p in ckdir.iterdir()
                  if p.is_dir() and p.name.startswith(TAG_PREFIX) and not p.name.endswith("_universal"))
    for t in tags[: max(0, len(tags) - max(1, keep_last))]:
        if t != keep:
            shutil.rmtree(ckdir / t, ignore_errors=True)
            shutil.rmtree(ckdir / f"{t}_universal", ignore_errors=True)


def to_universal(ckdir: Path, tag: str) -> str:
    """Convert checkpoint `tag` to DeepSpeed's universal format (world-size independent) once, on rank 0,
    into `{tag}_universal` (atomic rename); every rank returns the new tag."""
    utag = f"{tag}_universal"
    if dist.get_rank() == 0 and not (ckdir / utag).is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=f".{utag}.tmp-", dir=ckdir))
        args = argparse.Namespace(input_folder=str(ckdir / tag), output_folder=str(tmp / "out"), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=False)
        with safe_loading():
            ds_to_universal.main(args)
        (tmp / "out").rename(ckdir / utag)
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    return utag


def load(engine, ckdir: Path, tag: str) -> dict[str, Any]:
    """Load DeepSpeed state (safely: weights_only) + this rank's RNG; returns the client state."""
    meta = read_meta(ckdir, tag)
    install(engine)
    elastic = meta["world_size"] != dist.get_world_size()
    load_tag = f"{tag}_universal" if elastic else tag  # the caller converted it and set load_universal
    path, client = engine.load_checkpoint(str(ckdir), tag=load_tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None:
        raise CheckpointError(f"{ckdir / tag}: DeepSpeed could not load this checkpoint")
    rng_file = ckdir / tag / f"rng_rank{dist.get_rank()}.pt"
    if rng_file.is_file() and not elastic:  # another world size: per-rank streams cannot match anyway
        set_rng_state(safe_torch_load(rng_file))
    return client
