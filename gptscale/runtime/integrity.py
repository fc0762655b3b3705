"""Integrity of checkpoints: checksums of their files (written where the files are written, verified before
they are trusted) and the inf/NaN check of weights.

Saving: every rank hashes the files it wrote itself (DeepSpeed names a rank's files ``*zero_pp_rank_{r}_*``;
gptscale's ``rng_rank{r}.pt``; anything else is rank 0's), the hashes are gathered on rank 0 (`record`),
and rank 0 writes them into the tag's gptscale.json before ``latest`` moves. gptscale.json carries a hash of
its own content too (`seal` / `unsealed`), so a changed byte there is caught as well.

Loading: `problems` lists what does not match (a missing file, a wrong size, a wrong sha256); with a process
group the files are shared out among the ranks and the findings gathered, so every rank gets the same answer
after reading only its share.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

SELF_KEY = "meta_sha256"
"""gptscale.json's hash of its own content (every other key, canonical JSON)."""
_OWNER = re.compile(r"(?:zero_pp_rank_|rng_rank)(\d+)[_.]")


def owner(name: str) -> int:
    """The rank that writes checkpoint file `name` (pure data parallelism: DeepSpeed's dp rank = rank)."""
    m = _OWNER.search(name)
    return int(m.group(1)) if m else 0


def digest(path: Path) -> dict[str, Any]:
    """{"bytes": size, "sha256": hex} of one file."""
    with open(path, "rb") as f:
        h = hashlib.file_digest(f, "sha256")
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _files(tag_dir: Path, skip: set[str]) -> list[str]:
    return sorted(p.relative_to(tag_dir).as_posix() for p in tag_dir.rglob("*")
                  if p.is_file() and not p.name.startswith(".") and p.name not in skip)


def _group() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def record(tag_dir: Path, skip: set[str]) -> dict[str, dict[str, Any]]:
    """Every rank hashes its own files of `tag_dir`, then (a collective) rank 0 gets them all, plus any file
    nobody claimed; other ranks get {}. `skip`: names not recorded (gptscale.json itself)."""
    rank, world = _group()
    mine = {n: digest(tag_dir / n) for n in _files(tag_dir, skip) if owner(n) == rank}
    parts = [mine]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, mine)  # also the barrier: every rank has finished writing
    if rank != 0:
        return {}
    merged = {k: v for part in parts for k, v in part.items()}
    for n in _files(tag_dir, skip):
        if n not in merged:  # written by a rank outside this world's numbering, or by nobody's rule
            merged[n] = digest(tag_dir / n)
    return merged


def seal(meta: dict[str, Any]) -> dict[str, Any]:
    """`meta` with SELF_KEY set to the hash of the rest."""
    body = {k: v for k, v in meta.items() if k != SELF_KEY}
    return {**body, SELF_KEY: hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}


def unsealed(meta: dict[str, Any]) -> bool:
    """True when `meta` carries a self-hash that does not match its content (absent: an older checkpoint)."""
    return SELF_KEY in meta and seal(meta)[SELF_KEY] != meta[SELF_KEY]


def _check(tag_dir: Path, name: str, want: dict[str, Any]) -> str | None:
    p = tag_dir / name
    if not p.is_file():
        return f"{p}: missing (the checkpoint records it)"
    size = p.stat().st_size
    if size != want["bytes"]:
        return f"{p}: {size} bytes, but {want['bytes']} were written (truncated or overwritten)"
    got = digest(p)["sha256"]
    if got != want["sha256"]:
        return f"{p}: sha256 {got[:12]}... differs from the {want['sha256'][:12]}... recorded when it was written"
    return None


def problems(tag_dir: Path, files: dict[str, dict[str, Any]]) -> list[str]:
    """What in `tag_dir` does not match `files` (name -> digest); [] when all match. With a process group
    every rank checks a share and all get the whole list (a collective: every rank must call it)."""
    rank, world = _group()
    names = sorted(files)
    found = [m for n in names[rank::world] if (m := _check(tag_dir, n, files[n]))]
    if world > 1:
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, found)
        found = sorted(m for part in parts for m in part)
    return found


def nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, int, int]]:
    """(name, non-finite count, numel) of each tensor holding inf or NaN."""
    named = [(n, t) for n, t in named if t.is_floating_point() and t.numel()]
    if not named:
        return []
    ok = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()  # one device sync
    return [(n, int((~torch.isfinite(t)).sum()), t.numel()) for (n, t), good in zip(named, ok) if not good]
