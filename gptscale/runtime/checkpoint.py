"""Checkpoints of a run: DeepSpeed state + client state + per-rank RNG, `latest` pointer, keep-last-K.

    RUN_DIR/checkpoints/latest            tag of the newest complete checkpoint (atomic rename, rank 0)
    RUN_DIR/checkpoints/step_00000040/    DeepSpeed's files, gptscale.json, rng_rank{r}.pt

`latest` moves only after every rank has finished writing (barrier), so a kill during a save leaves it on
the previous, complete checkpoint; old checkpoints are pruned only after `latest` has moved.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gptscale.config import RunConfig
from gptscale.files import atomic_write_bytes, atomic_write_json

TAG_PREFIX = "step_"


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def latest_tag(ckdir: Path) -> str | None:
    f = ckdir / "latest"
    return f.read_text().strip() if f.is_file() else None


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
    import io

    ckdir = run_dir / "checkpoints"
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
        atomic_write_json(ckdir / tag / "gptscale.json", {
            "model": dataclasses.asdict(cfg.model), "tokenizer": cfg.data.tokenizer or None, "step": step,
            "tokens": client_state.get("tokens"), "world_size": world, "zero_stage": zero_stage})
    _barrier()  # every rank has written all its files
    if rank == 0:
        atomic_write_bytes(ckdir / "latest", tag.encode())
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


def find(run_dir: Path, resume: str) -> tuple[Path, str] | None:
    """Which checkpoint to resume from: 'auto' (the run's latest, if any), 'none', or a path to a run dir,
    a checkpoints dir or a tag dir."""
    if resume == "none":
        return None
    if resume == "auto":
        ckdir = run_dir / "checkpoints"
        tag = latest_tag(ckdir)
        return (ckdir, tag) if tag else None
    p = Path(resume)
    if (p / "checkpoints" / "latest").is_file():
        return p / "checkpoints", latest_tag(p / "checkpoints")
    if (p / "latest").is_file():
        return p, latest_tag(p)
    if (p / "gptscale.json").is_file():
        return p.parent, p.name
    raise FileNotFoundError(f"--resume {resume}: no checkpoint there (expected a run dir, a checkpoints dir with "
                            f"'latest', or a step_* dir)")


def saved_world_size(ckdir: Path, tag: str) -> int:
    return int(json.loads((ckdir / tag / "gptscale.json").read_text())["world_size"])


def to_universal(ckdir: Path, tag: str) -> str:
    """Convert checkpoint `tag` to DeepSpeed's universal format (world-size independent) once, on rank 0,
    into `{tag}_universal` (atomic rename); every rank returns the new tag."""
    utag = f"{tag}_universal"
    if dist.get_rank() == 0 and not (ckdir / utag).is_dir():
        import argparse
        import tempfile

        from deepspeed.checkpoint import ds_to_universal

        from gptscale.runtime.safeload import safe_loading


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
    from gptscale.runtime.safeload import install, safe_torch_load

    meta = json.loads((ckdir / tag / "gptscale.json").read_text())
    install(engine)
    elastic = meta["world_size"] != dist.get_world_size()
    load_tag = f"{tag}_universal" if elastic else tag  # pretrain.main converted it and set load_universal
    path, client = engine.load_checkpoint(str(ckdir), tag=load_tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"{ckdir / tag}: DeepSpeed could not load this checkpoint")
    rng_file = ckdir / tag / f"rng_rank{dist.get_rank()}.pt"
    if rng_file.is_file() and not elastic:  # another world size: per-rank streams cannot match anyway
        set_rng_state(safe_torch_load(rng_file))
    return client
