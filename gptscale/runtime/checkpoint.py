"""Checkpoints of a run, the one place that finds, resolves, verifies, loads, saves and prunes them.

    RUN_DIR/checkpoints/latest            tag of the newest complete checkpoint (a hint, rank 0)
    RUN_DIR/checkpoints/step_00000040/    DeepSpeed's files, rng_rank{r}.pt, gptscale.json (META_FILE, last)

A save writes DeepSpeed's files and the RNG states on every rank; each rank hashes what it wrote, rank 0
gathers the hashes into gptscale.json (written last: a tag folder without it is an unfinished save), then
moves `latest` and prunes older checkpoints (never newer ones). Weights holding inf/NaN are not saved.

Lookup: `resolve(path, tag)` turns a run folder (its newest complete checkpoint), its checkpoints/ folder or
a tag folder into (checkpoints folder, tag); `find(run_dir, resume)` is the resume rule: the newest complete
checkpoint whose files match their checksums, falling back over corrupt ones (moved aside to
``step_N.corrupt``, never deleted) with a warning; `guard_newer` refuses to step back over newer ones.
`load_model` gives the checkpoint's fp32 weights in a plain GPT (export, fine-tuning init), `load` restores a
DeepSpeed engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from deepspeed.checkpoint import ds_to_universal

from gptscale.config import ModelConfig, RunConfig, from_dict, to_dict
from gptscale.errors import GptscaleError
from gptscale.files import atomic_write_bytes, atomic_write_json
from gptscale.model import GPT, load_state
from gptscale.runtime import faults, integrity
from gptscale.runtime.integrity import nonfinite
from gptscale.runtime.safeload import fp32_state_dict, install, safe_loading, safe_torch_load

META_FILE = "gptscale.json"
"""gptscale's metadata in every checkpoint tag folder: model and run config, tokenizer and its hash, step,
tokens, world, stage, and the checksum of every other file (see gptscale.runtime.checksums)."""
LATEST = "latest"
TAG_PREFIX = "step_"
CHECKPOINTS = "checkpoints"
CORRUPT_SUFFIX = ".corrupt"
STEPPED_BACK = "stepped_back"
"""Folder (in checkpoints/) that newer checkpoints are moved to by a resume with train.allow_step_back."""
LOAD_ERRORS = (OSError, EOFError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile)
"""What torch.load / DeepSpeed raise on a truncated or garbled checkpoint file."""

KILL_POINTS = [faults.label(f"ckpt.{name}", where) for name, where in (
    ("after_engine_save", "a rank finished DeepSpeed's save_checkpoint (its model/optimizer files)"),
    ("after_rng", "a rank wrote its rng_rank{r}.pt"),
    ("after_checksums", "the hashes are gathered; gptscale.json not yet written"),
    ("after_meta", "rank 0 wrote gptscale.json; latest not yet moved"),
    ("after_latest", "rank 0 moved latest; older checkpoints not yet pruned"),
    ("after_prune", "rank 0 pruned; the closing barrier not yet passed"))]


class CheckpointError(GptscaleError, FileNotFoundError):
    """A checkpoint that is missing, incomplete or unreadable; the message names the path and what exists."""


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def step_of(tag: str) -> int | None:
    """The step of a checkpoint tag (``step_00000040`` -> 40), None for any other name."""
    m = re.fullmatch(rf"{TAG_PREFIX}(\d+)", tag)
    return int(m.group(1)) if m else None


def latest_tag(ckdir: Path) -> str | None:
    """The tag `ckdir/latest` names, or None when there is none."""
    f = Path(ckdir) / LATEST
    tag = f.read_text(errors="replace").strip() if f.is_file() else ""
    return tag or None


def is_tag_dir(p: Path) -> bool:
    """A complete-looking checkpoint folder: gptscale's metadata and DeepSpeed's model states."""
    return (p / META_FILE).is_file() and any(p.glob("*model_states.pt"))


def complete_tags(ckdir: Path) -> list[str]:
    """The complete checkpoints of `ckdir`, oldest first (by step)."""
    if not Path(ckdir).is_dir():
        return []
    tags = [d.name for d in Path(ckdir).iterdir() if step_of(d.name) is not None and is_tag_dir(d)]
    return sorted(tags, key=step_of)


def _others(ckdir: Path, tag: str) -> str:
    rest = [t for t in complete_tags(ckdir) if t != tag]
    return f"; other checkpoints in {ckdir}: {', '.join(rest)}" if rest else f"; {ckdir} holds no other checkpoint"


def resolve(path: str | Path, tag: str | None = None) -> tuple[Path, str]:
    """(checkpoints folder, tag) for a run folder or its checkpoints folder (the newest complete checkpoint:
    ``latest`` is only a hint) or a tag folder. ``tag`` picks another; with a tag folder it must name it."""
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
    tags = complete_tags(ckpts)
    if tag is None and not tags:
        unfinished = sorted(d.name for d in ckpts.iterdir() if step_of(d.name) is not None)
        raise CheckpointError(f"{p}: no complete checkpoint here" + (
            f" ({', '.join(unfinished)} lack {META_FILE}: saves that did not finish)" if unfinished else
            f" (neither {CHECKPOINTS}/ nor a tag folder with {META_FILE})"))
    tag = tag if tag is not None else tags[-1]
    if not is_tag_dir(ckpts / tag):
        raise CheckpointError(f"{ckpts / tag}: checkpoint {tag!r} is missing or incomplete (no {META_FILE} or "
                              f"*model_states.pt){_others(ckpts, tag)}")
    return ckpts, tag


def read_meta(ckdir: Path, tag: str) -> dict[str, Any]:
    """The tag's gptscale.json (CheckpointError naming the file when it is missing, not JSON, or changed)."""
    f = ckdir / tag / META_FILE
    try:
        meta = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{f}: unreadable checkpoint metadata ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or integrity.unsealed(meta):
        raise CheckpointError(f"{f}: its content does not match the checksum it was written with (corrupt or "
                              f"edited){_others(ckdir, tag)}")
    return meta


def problems(ckdir: Path, tag: str) -> list[str]:
    """What is wrong with checkpoint `tag` ([] when every recorded file matches its checksum). A collective
    when a process group is up: every rank must call it, each reads a share of the files."""
    try:
        meta = read_meta(ckdir, tag)
    except CheckpointError as e:
        return [str(e)]
    return integrity.problems(ckdir / tag, meta.get("files", {}))


def verified(ckdir: Path, tag: str, verify: bool = True) -> tuple[Path, str]:
    """(ckdir, tag) when its files match their checksums (or `verify` is off), else CheckpointError naming the
    first bad file and the other checkpoints."""
    bad = problems(ckdir, tag) if verify else []
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CheckpointError(f"checkpoint {tag} is corrupt: {bad[0]}{more}{_others(ckdir, tag)} (pick one with "
                              f"--resume/--tag; train.verify_checkpoint=false skips this check)")
    return ckdir, tag


def find(run_dir: Path, resume: str, verify: bool = True,
         warn: Callable[[str], None] = print) -> tuple[Path, str] | None:
    """Which checkpoint to resume from: 'none'; 'auto' (the run's newest complete checkpoint whose files match
    their checksums: a corrupt one is moved aside to ``TAG.corrupt`` with a warning and the next older one is
    tried); or a path to a run dir, a checkpoints dir or a tag dir (see `resolve`; a corrupt one is an error).
    A collective when a process group is up (the verification)."""
    if resume == "none":
        return None
    if resume != "auto":
        try:
            return verified(*resolve(resume), verify=verify)
        except CheckpointError as e:
            raise CheckpointError(f"--resume {resume}: {e}") from None
    ckdir = run_dir / CHECKPOINTS
    tags, hint = complete_tags(ckdir), latest_tag(ckdir)
    for tag in reversed(tags):
        bad = problems(ckdir, tag) if verify else []
        if not bad:
            if hint != tag:
                warn(f"warning: {ckdir / LATEST} names {hint or 'nothing'}; resuming from the newest complete "
                     f"checkpoint, {tag}")
            return ckdir, tag
        moved = quarantine(ckdir, tag)
        warn(f"warning: checkpoint {tag} is corrupt ({bad[0]}); moved to {moved} (kept, not deleted); trying the "
             f"previous one")
    if tags:
        raise CheckpointError(f"{ckdir}: every checkpoint is corrupt ({', '.join(tags)}, moved to *{CORRUPT_SUFFIX}); "
                              f"start afresh with --resume none, or inspect them")
    return None


def quarantine(ckdir: Path, tag: str) -> Path:
    """Move a corrupt checkpoint aside (rank 0; a collective when a process group is up)."""
    dest = ckdir / f"{tag}{CORRUPT_SUFFIX}"
    n = 1
    while dest.exists():
        dest, n = ckdir / f"{tag}{CORRUPT_SUFFIX}{n}", n + 1
    if _rank() == 0:
        (ckdir / tag).rename(dest)
    _barrier()
    return dest


def guard_newer(run_dir: Path, start_step: int, allow: bool, warn: Callable[[str], None] = print) -> None:
    """Refuse to start at `start_step` in a run folder holding newer complete checkpoints (the run would write
    over them and prune them), unless `allow` (train.allow_step_back): then they are moved, kept, to
    checkpoints/stepped_back/. A collective when a process group is up."""
    ckdir = run_dir / CHECKPOINTS
    newer = [t for t in complete_tags(ckdir) if step_of(t) > start_step]
    if not newer:
        return
    if not allow:
        raise CheckpointError(
            f"{ckdir} holds checkpoints newer than step {start_step} ({', '.join(newer)}): starting there would "
            f"overwrite them. Resume the newest with --resume auto, use another --train.run_dir, or pass "
            f"--train.allow_step_back=true to move them to {ckdir / STEPPED_BACK}/ (kept) and continue")
    if _rank() == 0:
        (ckdir / STEPPED_BACK).mkdir(exist_ok=True)
        for t in newer:
            dest, n = ckdir / STEPPED_BACK / t, 1
            while dest.exists():
                dest, n = ckdir / STEPPED_BACK / f"{t}-{n}", n + 1
            (ckdir / t).rename(dest)
    _barrier()
    warn(f"warning: train.allow_step_back: moved {', '.join(newer)} to {ckdir / STEPPED_BACK}/")


def saved_world_size(ckdir: Path, tag: str) -> int:
    return int(read_meta(ckdir, tag)["world_size"])


def load_model(path: str | Path, tag: str | None = None, verify: bool = True) -> tuple[GPT, dict[str, Any]]:
    """(GPT in eval mode with the checkpoint's fp32 weights, the checkpoint's gptscale.json + its location),
    in a plain process (no DeepSpeed engine, any ZeRO stage). The files are verified against their checksums
    (a collective when a process group is up) and weights holding inf/NaN are refused."""
    ckpts, tag = verified(*resolve(path, tag), verify=verify)
    meta = read_meta(ckpts, tag)
    where = ckpts / tag / META_FILE
    try:
        cfg = from_dict(ModelConfig, meta["model"], where=str(where))
    except (ValueError, KeyError, TypeError) as e:  # missing keys, ConfigError
        raise CheckpointError(f"{where}: unreadable checkpoint metadata ({type(e).__name__}: {e})") from None
    model = GPT(cfg)
    try:
        state = fp32_state_dict(ckpts, tag)
    except LOAD_ERRORS as e:
        raise CheckpointError(f"{ckpts / tag}: unreadable checkpoint ({type(e).__name__}: {e}){_others(ckpts, tag)}"
                              ) from None
    refuse_nonfinite(state.items(), f"checkpoint {ckpts / tag}")
    load_state(model, state, str(ckpts / tag))
    return model.eval(), {**meta, "checkpoint": str(ckpts / tag), "tag": tag}


def refuse_nonfinite(named: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    bad = nonfinite(named)
    if bad:
        name, count, numel = bad[0]
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise CheckpointError(f"{what}: weight {name!r} holds {count} inf/NaN values of {numel}{more}; refusing to "
                              f"use it (an older checkpoint, or a lower --train.lr, is the way on)")


# --------------------------------------------------------------------------------------- save / load


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


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


def _module_tensors(engine) -> list[tuple[str, torch.Tensor]]:
    """This rank's weights: the whole module (ZeRO 0-2), or its partition of each parameter (ZeRO-3)."""
    return [(n, p.ds_tensor if hasattr(p, "ds_tensor") else p.data) for n, p in engine.module.named_parameters()]


def _refuse_nonfinite_everywhere(engine, ckdir: Path, tag: str) -> None:
    """Every rank checks its weights; all raise together when any rank found inf/NaN (nothing written)."""
    bad = nonfinite(_module_tensors(engine))
    found = [bad]
    if dist.get_world_size() > 1:
        found = [None] * dist.get_world_size()
        dist.all_gather_object(found, bad)
    found = [b for part in found for b in part]
    if found:
        name, count, numel = found[0]
        prev = complete_tags(ckdir)
        raise CheckpointError(f"checkpoint {tag} not written: weight {name!r} holds {count} inf/NaN values of "
                              f"{numel}" + (f"; the newest checkpoint, {ckdir / prev[-1]}, is kept" if prev else "")
                              + "; resume from it with a lower --train.lr (or more --train.warmup_steps)")


def save(engine, run_dir: Path, cfg: RunConfig, step: int, client_state: dict[str, Any], zero_stage: int,
         meta: dict[str, Any] | None = None) -> Path:
    """Write checkpoint `step_{step}` on every rank (checksums gathered into gptscale.json, written last), then
    move `latest` and prune (rank 0). `meta`: more keys for gptscale.json (tokenizer hash, resumes)."""
    ckdir, tag = run_dir / CHECKPOINTS, tag_for(step)
    rank, world = dist.get_rank(), dist.get_world_size()
    _refuse_nonfinite_everywhere(engine, ckdir, tag)
    if rank == 0 and (ckdir / tag).exists():
        if is_tag_dir(ckdir / tag):
            raise CheckpointError(f"{ckdir / tag}: a complete checkpoint is already there; not overwriting it")
        shutil.rmtree(ckdir / tag)  # an unfinished save of this step (no gptscale.json): gptscale's own debris
    _barrier()
    # universal_checkpoint_info: lets DeepSpeed's ds_to_universal convert this checkpoint for another
    # world size (pure data parallelism: no tensor/pipeline-parallel patterns to declare).
    client_state = {**client_state, "universal_checkpoint_info": {}}
    engine.save_checkpoint(str(ckdir), tag=tag, client_state=client_state, save_latest=False)
    faults.point("ckpt.after_engine_save")
    buf = io.BytesIO()
    torch.save(rng_state(), buf)
    atomic_write_bytes(ckdir / tag / f"rng_rank{rank}.pt", buf.getvalue())
    faults.point("ckpt.after_rng")
    files = integrity.record(ckdir / tag, skip={META_FILE})  # gathers: every rank has written all its files
    faults.point("ckpt.after_checksums")
    if rank == 0:
        atomic_write_json(ckdir / tag / META_FILE, integrity.seal({
            "model": dataclasses.asdict(cfg.model), "tokenizer": cfg.data.tokenizer or None, **(meta or {}),
            "step": step, "tokens": client_state.get("tokens"), "world_size": world, "zero_stage": zero_stage,
            "config": to_dict(cfg), "files": files}))
        faults.point("ckpt.after_meta")
        atomic_write_bytes(ckdir / LATEST, tag.encode())
        faults.point("ckpt.after_latest")
        prune(ckdir, cfg.train.keep_last, tag)
        faults.point("ckpt.after_prune")
    _barrier()
    return ckdir / tag


def prune(ckdir: Path, keep_last: int, current: str) -> None:
    """Delete all but the newest `keep_last` checkpoints up to `current` (the one just written): never
    `current`, never a newer one, never one moved aside (corrupt, stepped back)."""
    upto = step_of(current)
    tags = sorted((p.name for p in ckdir.iterdir() if p.is_dir() and (s := step_of(p.name)) is not None
                   and s <= upto), key=step_of)
    for t in tags[: max(0, len(tags) - max(1, keep_last))]:
        if t != current:
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
    try:
        path, client = engine.load_checkpoint(str(ckdir), tag=load_tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
    except LOAD_ERRORS as e:
        raise CheckpointError(f"{ckdir / tag}: unreadable checkpoint ({type(e).__name__}: {e}){_others(ckdir, tag)}"
                              ) from None
    if path is None:
        raise CheckpointError(f"{ckdir / tag}: DeepSpeed could not load this checkpoint")
    rng_file = ckdir / tag / f"rng_rank{dist.get_rank()}.pt"
    if rng_file.is_file() and not elastic:  # another world size: per-rank streams cannot match anyway
        set_rng_state(safe_torch_load(rng_file))
    return client
