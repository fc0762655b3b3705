"""The local cache of shards from other filesystems (s3:// ...): where it lives and how a shard gets in.

Files are named by their sha256 (content-addressed, so ranks and runs can share one cache); a download is
hashed while it streams and put in place only when it matches the manifest. ShardStream re-hashes a cached
file once per process before its first use.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from gptscale.data.manifest import ShardError


def default_cache_dir() -> Path:
    """Where downloaded shards are cached: $XDG_CACHE_HOME/gptscale/shards, else ~/.cache/gptscale/shards."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "gptscale" / "shards"


def download(fs: pafs.FileSystem, remote: str, sha256: str, local: Path, what: str) -> None:
    """Fetch `remote` into the cache file `local`, hashing while it streams; a download that does not match
    `sha256` is never put in place. `what`: the shard as the error names it."""
    local.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".dl-", dir=local.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, fs.open_input_stream(remote) as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != sha256:
            raise ShardError(f"{what}: sha256 of the downloaded shard does not match manifest.json (corrupted at "
                             f"the source); re-run `gptscale shard` and upload again")
        os.replace(tmp, local)
    finally:
        Path(tmp).unlink(missing_ok=True)
