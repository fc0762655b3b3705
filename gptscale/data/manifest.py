"""Shard-set manifest: format/version, validation, atomic writes and pyarrow filesystem access.

A shard set is a folder (local path or URI such as s3://bucket/prefix) holding ``manifest.json`` and the
Arrow IPC shards it lists. Readers refuse a manifest whose format or version they do not know.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs

from gptscale.errors import GptscaleError

FORMAT = "gptscale-shards"
VERSION = 1
SUPPORTED_VERSIONS = (1,)


class ShardError(GptscaleError, RuntimeError):
    """A shard set that cannot be used as is: names the file and what to do."""


def resolve(uri: str | Path, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI that pyarrow understands (s3://, gs://, hdfs://)."""
    uri = str(uri)
    if filesystem is not None:  # the path inside that filesystem (a scheme, if given, is dropped)
        return filesystem, uri.split("://", 1)[-1]
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def read_manifest(uri: str | Path, filesystem: pafs.FileSystem | None = None) -> tuple[dict, pafs.FileSystem, str]:
    """Load and check a shard set's manifest; returns (manifest, filesystem, folder path)."""
    fs, root = resolve(uri, filesystem)
    path = f"{root.rstrip('/')}/manifest.json"
    try:
        with fs.open_input_stream(path) as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise ShardError(f"{uri}: no manifest.json; is this a folder written by `gptscale shard`?") from None
    except json.JSONDecodeError as e:
        raise ShardError(f"{path}: not valid JSON ({e}); rewrite the shard set with `gptscale shard`") from None
    if manifest.get("format") != FORMAT or "version" not in manifest:
        raise ShardError(f"{path}: missing format/version (expected format {FORMAT!r}); not a gptscale shard set")
    if manifest["version"] not in SUPPORTED_VERSIONS:
        raise ShardError(
            f"{path}: manifest version {manifest['version']} is not supported by this gptscale "
            f"(supports {list(SUPPORTED_VERSIONS)}); upgrade gptscale or re-shard the corpus")
    return manifest, fs, root
