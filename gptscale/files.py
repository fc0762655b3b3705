"""Small file helpers shared by every writer: atomic writes and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gptscale.errors import GptscaleError


def atomic_write_bytes(path: str | Path, data: Any, before_rename: Callable[[], None] | None = None) -> None:
    """Write to a unique temporary name in the same folder, fsync, then rename over `path`.

    A reader sees the old file or the complete new one, never a partial write. Plain `open` (not mkstemp)
    so the file gets the umask's permissions: shards and checkpoints are shared between users on clusters.
    `data`: bytes or any buffer (a pyarrow Buffer: no copy); `before_rename`: called between (fault points).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any, sort_keys: bool = True) -> None:
    """JSON written atomically; sort_keys=False keeps the dicts' own order (metrics: primary first)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=sort_keys) + "\n").encode())


def sha256_file(path: str | Path, fs: Any = None) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks; `fs` is an optional pyarrow filesystem."""
    h = hashlib.sha256()
    with (fs.open_input_stream(str(path)) if fs is not None else open(path, "rb")) as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


OUTPUT_MARKER = ".gptscale-output"
"""A file in every folder atomic_dir writes, naming what the folder is for (`kind`): only such a folder of the
same kind is ever replaced."""


class OutputError(GptscaleError, FileExistsError):
    """An output folder gptscale will not write over; the message names it and what to do."""


def written_by_gptscale(folder: Path, kind: str) -> bool:
    """Whether `folder` is one gptscale wrote as `kind`: its marker says so (folders from before the marker:
    an HF export's config.json carries our provenance key, a task model folder its gptscale_task.json)."""
    marker = folder / OUTPUT_MARKER
    if marker.is_file():
        try:
            return json.loads(marker.read_text()).get("kind") == kind
        except (ValueError, AttributeError):
            return False
    if kind == "hf-model" and (folder / "config.json").is_file():
        try:
            return "gptscale" in json.loads((folder / "config.json").read_text())
        except ValueError:
            return False
    return kind == "task-model" and (folder / "gptscale_task.json").is_file()


def check_output(out: Path, overwrite: bool, kind: str, sources: tuple[Path, ...] = ()) -> None:
    """Refuse an output folder that may not be written: a file, a non-empty folder without `overwrite`, one
    gptscale did not write as `kind`, or one that is, holds or lies inside one of `sources` (what is read)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder; choose another output folder")
    for src in sources:
        o, s = out.resolve(), Path(src).resolve()
        if o == s or o in s.parents or s in o.parents:
            raise OutputError(f"{out} would overlap {src}, which this command reads; choose an output folder "
                              f"outside it")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise OutputError(f"{out} exists and is not empty; pass overwrite=True (CLI: --overwrite) to replace it")
    if not written_by_gptscale(out, kind):
        raise OutputError(f"{out} exists and is not a {kind} folder gptscale wrote (no {OUTPUT_MARKER} of that "
                          f"kind): it is never replaced; move or delete it yourself, or choose another folder")


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False, kind: str = "hf-model",
               sources: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield an empty temporary sibling of `out` to fill; on success it becomes `out` in one rename.

    Nothing appears at `out` unless the block finished; an existing non-empty `out` is replaced only with
    `overwrite` and only when gptscale wrote it as `kind` (check_output; renamed aside first, deleted after),
    and survives a failed write. The folder and its files get the umask's permissions (mkdtemp and
    safetensors would leave them private); the folder gets its OUTPUT_MARKER.
    """
    out = Path(out)
    check_output(out, overwrite, kind, sources)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).write_text(json.dumps({"kind": kind}) + "\n")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~mask)
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}") if out.exists() else None
        if old is not None:
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
