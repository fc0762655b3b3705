"""Small file helpers shared by every writer: atomic writes and content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
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


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def sha256_file(path: str | Path, fs: Any = None) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks; `fs` is an optional pyarrow filesystem."""
    h = hashlib.sha256()
    with (fs.open_input_stream(str(path)) if fs is not None else open(path, "rb")) as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
