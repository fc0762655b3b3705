"""The shard writer's journal and its atomic writes, with the labelled kill points of the fault suite.

The journal is ONE file, ``.journal.npz``, written atomically (temporary name, fsync, rename) after every
document that completed a shard: the run's spec, document counts, the shards written so far (with their
sha256) and the tokens of each split not yet in a shard, all in one file, so it can never disagree with
itself. Its JSON part records the length and sha256 of each pending token array and is checked on load.

A killed run leaves at most: shards the journal does not know about yet (rewritten, byte-identical, by the
rerun), temporary files with gptscale's temp names (removed by the rerun, see ``remove_stale_temps``) and
the journal (removed once the manifest is written).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from gptscale.data.manifest import ShardError
from gptscale.files import atomic_write_bytes, sha256_file
from gptscale.runtime import faults

JOURNAL = ".journal.npz"
LEGACY_JOURNAL = (".progress.json", ".progress.npz")
"""The two-file journal of earlier versions (never trusted: a rerun starts over and removes them)."""
SPLITS = ("train", "val")
_TEMP = re.compile(r"^\.(?P<name>.+)\.\d+\.[0-9a-f]{8}\.tmp$")
"""gptscale's temporary names (files.atomic_write_bytes and `write_atomic`): .NAME.PID.HEX8.tmp"""
_OURS = re.compile(r"^((train|val)-\d{5}\.arrow|manifest\.json|\.journal\.npz|\.progress\.(json|npz))$")
"""Files the shard writer itself writes into its output folder (only their temp names are ever removed)."""

KILL_SHARD_TMP = faults.label("shard.after_shard_temp", "a shard is written and fsynced to its temporary name, "
                              "not renamed yet")
KILL_SHARD = faults.label("shard.after_shard_rename", "after a shard file is renamed into place, before the "
                          "journal records it")
KILL_JOURNAL_TMP = faults.label("shard.after_journal_temp", "the journal is written to its temporary name, not "
                                "renamed yet")
KILL_JOURNAL = faults.label("shard.after_journal_rename", "after the journal is renamed into place")
KILL_MANIFEST_TMP = faults.label("shard.after_manifest_temp", "every shard is written; manifest.json is at its "
                                 "temporary name, not renamed yet")
KILL_MANIFEST = faults.label("shard.after_manifest_rename", "manifest.json is in place, the journal not removed yet")


def write_atomic(path: Path, data, before_rename: str, after_rename: str) -> None:
    """files.atomic_write_bytes with the kill points `before_rename` / `after_rename`; a write the user can fix
    (a full disk, a read-only folder) is a ShardError. `data`: bytes or any buffer (a pyarrow Buffer: no copy)."""
    try:
        atomic_write_bytes(path, data, before_rename=lambda: faults.point(before_rename))
    except OSError as e:
        raise ShardError(f"{path}: cannot write it ({type(e).__name__}: {e}); free space or fix the folder's "
                         f"permissions, then rerun the same command (it resumes)") from None
    faults.point(after_rename)


def remove_stale_temps(out: Path) -> list[str]:
    """Delete the temporary files a killed run left in `out`: only gptscale's temp names of the files this
    writer writes there (never anything else). Returns the names removed. One run per folder at a time."""
    removed = []
    for p in out.iterdir():
        m = _TEMP.match(p.name)
        if m and _OURS.match(m["name"]) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return sorted(removed)


def remove_journal(out: Path) -> None:
    for name in (JOURNAL, *LEGACY_JOURNAL):
        (out / name).unlink(missing_ok=True)


def save(out: Path, spec: dict, stats: dict, shards: dict[str, list], pending: dict[str, np.ndarray]) -> None:
    """Write the whole journal as one file, atomically."""
    state = {"spec": spec, "stats": stats, "shards": shards,
             "pending": {s: {"tokens": len(a), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
                         for s, a in pending.items()}}
    buf = io.BytesIO()
    np.savez(buf, state=np.frombuffer(json.dumps(state, sort_keys=True).encode(), np.uint8), **pending)
    write_atomic(out / JOURNAL, buf.getbuffer(), KILL_JOURNAL_TMP, KILL_JOURNAL)


def load(out: Path, spec: dict) -> dict | None:
    """The journal of an unfinished run with this spec (its shards checked on disk), or None to start over."""
    path = out / JOURNAL
    if not path.exists():
        return None
    fix = f"delete {path} (the run starts over) or choose another --out"
    try:
        with np.load(path, allow_pickle=False) as z:
            state = json.loads(z["state"].tobytes())
            pending = {s: z[s] for s in SPLITS}
        same_spec = state.get("spec") == spec
        intact = all(len(pending[s]) == state["pending"][s]["tokens"] and
                     hashlib.sha256(pending[s].tobytes()).hexdigest() == state["pending"][s]["sha256"] for s in SPLITS)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile) as e:
        raise ShardError(f"{path}: unreadable journal ({type(e).__name__}: {e}); {fix}") from None
    if not same_spec:
        raise ShardError(f"{out} holds an unfinished run made with other settings ({path}); rerun with the same "
                         f"arguments to resume it, or {fix}")
    if not intact:
        raise ShardError(f"{path}: its pending tokens do not match its own record; {fix}")
    for s in SPLITS:  # every journaled shard must be on disk, intact
        for sh in state["shards"][s]:
            f = out / sh["file"]
            if not f.is_file() or sha256_file(f) != sh["sha256"]:
                raise ShardError(f"{f}: missing or does not match the journal {path} (changed since it was "
                                 f"written); delete {out} and rerun")
    state["pending"] = pending
    return state
