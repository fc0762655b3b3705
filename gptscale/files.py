"""Small file helpers shared by every writer: atomic writes and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a unique temporary name in the same folder, fsync, then rename over `path`.

    A reader sees the old file or the complete new one, never a partial write. Plain `open` (not mkstemp)
    so the file gets the umask's permissions: shards and checkpoints are shared between users on clusters.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
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


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling of `out` to fill; on success it becomes `out` in one rename.

    Nothing appears at `out` unless the block finished; an existing non-empty `out` is replaced only with
    `overwrite` (renamed aside first, deleted after), and survives a failed write. The folder and its files
    get the umask's permissions (mkdtemp and safetensors would leave them private).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (CLI: --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
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
