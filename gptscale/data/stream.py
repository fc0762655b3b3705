"""ShardStream: a stateful, rank-aware, resumable stream of token batches from one or more shard sets.

The order is global and independent of the world size (as MosaicML Streaming does it): for each epoch a
seeded permutation of the shards, cut into windows of ``shuffle_window`` shards whose samples are shuffled
together; several shard sets are interleaved by a fixed weighted schedule. Global position g is the g-th
sample of that order. Global step k covers positions [k*B*W, (k+1)*B*W) (B = batch_size per rank, W =
world size); rank r takes the B positions starting at k*B*W + r*B; DataLoader worker w of n takes the
rank's steps k = w, w+n, ... (the DataLoader hands them back in step order).

The state is one number, the global position reached, so
- exact resume: a fresh stream at that position yields the very batches that would have come next;
- elastic resume: a stream with another world size (or batch size) continues from the same position, so
  the samples before and after the save cover the order exactly once.

Local shards are memory-mapped; shards on other filesystems (s3:// ...) are downloaded to a cache folder
and then memory-mapped; the next window's shards are fetched and verified by a background thread. The cache
(``cache_dir``; default ``default_cache_dir()``: $XDG_CACHE_HOME/gptscale/shards, else
~/.cache/gptscale/shards, never a shared /tmp folder) is keyed by each shard's sha256, and every cached file
is hashed once per process before its first use: a file that does not match (planted, corrupted, truncated)
is discarded with a warning and downloaded again, never used.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch
from torch.utils.data import IterableDataset, get_worker_info

from gptscale.data.cache import default_cache_dir, download
from gptscale.data.manifest import ShardError, read_manifest
from gptscale.files import sha256_file

STATE_VERSION = 1
MIX_PERIOD = 1000  # positions per repeat of the weighted mixing schedule


@dataclass
class _Source:
    uri: str
    fs: pafs.FileSystem
    root: str
    shards: list[dict]
    offsets: np.ndarray  # (n_shards + 1,) first sample id of each shard
    row_len: int
    tokenizer_hash: str
    local: bool

    @property
    def n(self) -> int:
        return int(self.offsets[-1])


def _mix_schedule(weights: list[float], period: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth weighted round-robin over one period: (source per slot, count per source, prefix counts)."""
    w = np.asarray(weights, dtype=np.float64)
    if (w <= 0).any():
        raise ValueError(f"mixing weights must be > 0, got {weights}")
    if len(w) == 1:
        return np.zeros(1, np.int64), np.ones(1, np.int64), np.zeros((2, 1), np.int64)
    exact = w / w.sum() * period
    counts = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - counts), kind="stable")[: period - counts.sum()]:
        counts[i] += 1  # largest remainders
    sched = np.empty(period, np.int64)
    credit = np.zeros(len(w))
    for t in range(period):  # nginx-style smooth weighted round robin: evenly spread, deterministic
        credit += counts
        s = int(np.argmax(credit))
        credit[s] -= period
        sched[t] = s
    prefix = np.zeros((period + 1, len(w)), np.int64)
    np.add.at(prefix[1:], (np.arange(period), sched), 1)
    return sched, counts, np.cumsum(prefix, axis=0)


class ShardStream(IterableDataset):
    """Batches (batch_size, seq_len + 1) int64 of token rows; see the module docstring for the order."""

    def __init__(
        self,
        sources: str | Path | list[str] | dict[str, float],
        *,
        batch_size: int,
        split: str = "train",
        seed: int = 1234,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = True,
        shuffle_window: int = 8,
        epochs: int | None = None,
        drop_last: bool = True,
        verify: bool = True,
        tokenizer_hash: str | None = None,
        filesystem: pafs.FileSystem | None = None,
        cache_dir: str | Path | None = None,
        max_open_shards: int = 64,
    ):
        super().__init__()
        if isinstance(sources, (str, Path)):
            sources = {str(sources): 1.0}
        elif isinstance(sources, list):
            sources = {str(s): 1.0 for s in sources}
        self.weights = list(sources.values())
        self.sources = [self._open_source(uri, split, filesystem, tokenizer_hash) for uri in sources]
        for s in self.sources[1:]:
            if s.row_len != self.sources[0].row_len or s.tokenizer_hash != self.sources[0].tokenizer_hash:
                raise ShardError(f"{s.uri}: seq_len or tokenizer differs from {self.sources[0].uri}; cannot mix them")
        self.row_len = self.sources[0].row_len
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.shuffle_window, self.epochs, self.verify = max(1, shuffle_window), epochs, verify
        self.drop_last = drop_last
        self.rank, self.world_size = _dist_rank_world(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.max_open_shards = max_open_shards
        self.sched, self.counts, self.prefix = _mix_schedule(self.weights, MIX_PERIOD)
        self._start = 0  # global position at the start of the current iteration
        self._steps = 0  # global steps consumed since then
        self._reset_caches()

    # ------------------------------------------------------------------------------------ state

    @property
    def position(self) -> int:
        """Global samples consumed (all ranks together)."""
        return self._start + self._steps * self.batch_size * self.world_size

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
                "shuffle_window": self.shuffle_window, "weights": self.weights,
                "sources": [[s.uri, s.n, s.tokenizer_hash] for s in self.sources],
                "world_size": self.world_size, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; world size and batch size may differ (elastic resume)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"ShardStream state version {state.get('version')} is not {STATE_VERSION}")
        mine = [[s.n, s.tokenizer_hash] for s in self.sources]
        theirs = [list(x[1:]) for x in state["sources"]]
        for key in ("seed", "shuffle", "shuffle_window", "weights"):
            if state[key] != getattr(self, key):
                raise ValueError(f"cannot resume: stream {key}={getattr(self, key)!r} but the state has {state[key]!r}")
        if mine != theirs:
            raise ValueError(f"cannot resume: the shard sets differ from the saved ones ({state['sources']})")
        self._start, self._steps = int(state["position"]), 0

    def __getstate__(self) -> dict:  # worker copies: no open files, locks or threads
        d = dict(self.__dict__)
        for k in ("_open", "_lock", "_pool", "_windows", "_epochs", "_verified"):
            d.pop(k, None)
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._open: OrderedDict = OrderedDict()
        self._windows: OrderedDict = OrderedDict()
        self._epochs: dict = {}
        self._verified: set = set()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    # -------------------------------------------------------------------------------- iteration

    def total_positions(self) -> int | None:
        """Global positions in the stream (None: endless). With mixing, `epochs` counts all sources' rows."""
        return None if self.epochs is None else self.epochs * sum(s.n for s in self.sources)

    def steps_remaining(self) -> int | None:
        """Global steps left from the current position. A last partial step is dropped if drop_last (every
        rank gets full batches: what lockstep training needs), else its positions are split over the ranks
        in order (some ranks may get a short or no batch: for evaluation and exact-coverage checks)."""
        total = self.total_positions()
        if total is None:
            return None
        gb = self.batch_size * self.world_size
        left = max(0, total - self.position)
        return left // gb if self.drop_last else -(-left // gb)

    def __iter__(self):
        if os.getpid() != self._pid:  # a forked DataLoader worker: no inherited threads, locks or maps
            self._reset_caches()
        self._start, self._steps = self.position, 0
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        remaining, total = self.steps_remaining(), self.total_positions()
        k = wid
        while remaining is None or k < remaining:
            first = self._start + k * self.batch_size * self.world_size + self.rank * self.batch_size
            count = self.batch_size if total is None else min(self.batch_size, total - first)
            if info is None:
                self._steps = k + 1  # counted before handing it out: state_dict() now points past it
            if count > 0:
                yield self.batch_at(first, count)
            k += nw

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global positions -> (source index, sample id within that source): the global order itself."""
        g = np.asarray(positions, dtype=np.int64)
        slot = g % len(self.sched)
        src = self.sched[slot]
        p = (g // len(self.sched)) * self.counts[src] + self.prefix[slot, src]
        ids = np.empty_like(p)
        for s in np.unique(src):
            sel = src == s
            ids[sel] = self._sample_ids(int(s), p[sel])
        return src, ids

    def batch_at(self, first: int, count: int | None = None) -> torch.Tensor:
        """The rows at positions [first, first + count) as an int64 tensor (count, seq_len + 1)."""
        count = self.batch_size if count is None else count
        fast = self._batch_in_one_window(first, count) if len(self.sources) == 1 else None
        if fast is not None:
            return fast
        src, ids = self.locate(np.arange(first, first + count, dtype=np.int64))
        out = np.empty((count, self.row_len), dtype=np.int64)
        for s in np.unique(src):
            sel = np.nonzero(src == s)[0]
            source = self.sources[s]
            shard = np.searchsorted(source.offsets, ids[sel], side="right") - 1
            for sh in np.unique(shard):
                m = shard == sh
                out[sel[m]] = self._rows(int(s), int(sh))[ids[sel][m] - source.offsets[sh]]
        return torch.from_numpy(out)

    def _batch_in_one_window(self, first: int, count: int) -> torch.Tensor | None:
        """Fast path (one source, batch inside one shuffle window): row copies straight from the maps."""
        epoch, i0 = divmod(first, self.sources[0].n)
        _, win_start = self._epoch_plan(0, epoch)
        w = int(np.searchsorted(win_start, i0, side="right")) - 1
        j0 = i0 - int(win_start[w])
        if i0 + count > win_start[w + 1]:
            return None
        _, shard, row = self._window(0, epoch, w)
        out = np.empty((count, self.row_len), dtype=np.int64)
        for j in range(count):
            out[j] = self._rows(0, shard[j0 + j])[row[j0 + j]]
        return torch.from_numpy(out)

    # ---------------------------------------------------------------------------------- ordering

    def _epoch_plan(self, s: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard order, first in-epoch index of each window) for source s in this epoch."""
        key = (s, epoch)
        if key not in self._epochs:
            src = self.sources[s]
            n_sh = len(src.shards)
            order = (np.random.default_rng([self.seed, s, epoch]).permutation(n_sh) if self.shuffle
                     else np.arange(n_sh))
            sizes = np.diff(src.offsets)[order]
            win_sizes = np.add.reduceat(sizes, np.arange(0, n_sh, self.shuffle_window))
            if len(self._epochs) >= 2 * len(self.sources):
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[key] = (order, np.concatenate([[0], np.cumsum(win_sizes)]))
        return self._epochs[key]

    def _window(self, s: int, epoch: int, w: int) -> tuple[np.ndarray, list[int], list[int]]:
        """Window w of an epoch: (sample ids in order, shard of each, row of each)."""
        key = (s, epoch, w)
        win = self._windows.get(key)
        if win is None:
            src = self.sources[s]
            order, _ = self._epoch_plan(s, epoch)
            group = order[w * self.shuffle_window:(w + 1) * self.shuffle_window]
            ids = np.concatenate([np.arange(src.offsets[sh], src.offsets[sh + 1]) for sh in group])
            if self.shuffle:
                ids = np.random.default_rng([self.seed, s, epoch, w, 1]).permutation(ids)
            shard = np.searchsorted(src.offsets, ids, side="right") - 1
            win = (ids, shard.tolist(), (ids - src.offsets[shard]).tolist())  # lists: fast per-row access
            self._windows[key] = win
            while len(self._windows) > 2 * len(self.sources) + 2:
                self._windows.popitem(last=False)
            nxt = order[(w + 1) * self.shuffle_window:(w + 2) * self.shuffle_window]
            self._prefetch(s, [int(x) for x in nxt])
        return win

    def _sample_ids(self, s: int, p: np.ndarray) -> np.ndarray:
        """Source positions -> sample ids (global row index within source s)."""
        n = self.sources[s].n
        epoch, i = p // n, p % n
        out = np.empty_like(p)
        for e in np.unique(epoch):
            me = epoch == e
            _, win_start = self._epoch_plan(s, int(e))
            w = np.searchsorted(win_start, i[me], side="right") - 1
            res = np.empty(int(me.sum()), np.int64)
            for wi in np.unique(w):
                mw = w == wi
                res[mw] = self._window(s, int(e), int(wi))[0][i[me][mw] - win_start[wi]]
            out[me] = res
        return out

    # ------------------------------------------------------------------------------------- files

    def _open_source(self, uri: str, split: str, filesystem, tokenizer_hash: str | None) -> _Source:
        manifest, fs, root = read_manifest(uri, filesystem)
        if tokenizer_hash is not None and manifest["tokenizer"]["hash"] != tokenizer_hash:
            raise ShardError(
                f"{uri}: shards were made with tokenizer {manifest['tokenizer']['hash'][:12]} "
                f"({manifest['tokenizer'].get('path')}) but the given tokenizer is {tokenizer_hash[:12]}; "
                f"re-shard with this tokenizer or pass the one the shards were made with")
        if split not in manifest["splits"] or not manifest["splits"][split]["shards"]:
            raise ShardError(f"{uri}: manifest has no {split!r} shards (splits: {sorted(manifest['splits'])})")
        shards = manifest["splits"][split]["shards"]
        offsets = np.concatenate([[0], np.cumsum([sh["sequences"] for sh in shards])]).astype(np.int64)
        return _Source(uri, fs, root, shards, offsets, manifest["row_len"], manifest["tokenizer"]["hash"],
                       isinstance(fs, pafs.LocalFileSystem))

    def _local_path(self, s: int, sh: int) -> str:
        """A local file for shard sh of source s: the file itself, or a verified cached download."""
        src, meta = self.sources[s], self.sources[s].shards[sh]
        remote = f"{src.root.rstrip('/')}/{meta['file']}"
        if src.local:
            if self.verify and remote not in self._verified:
                if sha256_file(remote) != meta["sha256"]:
                    raise ShardError(f"{remote}: sha256 does not match manifest.json (truncated or corrupted); "
                                     f"re-run `gptscale shard`, or pass verify=False to skip the check")
                self._verified.add(remote)
            return remote
        local = self.cache_dir / f"{meta['sha256']}.arrow"  # content-addressed: safe to share across ranks
        if str(local) not in self._verified and local.exists():  # hashed once per process before first use
            if sha256_file(local) == meta["sha256"]:
                self._verified.add(str(local))
                return str(local)
            warnings.warn(f"{local}: cached copy of {src.uri}/{meta['file']} does not match its sha256 (planted "
                          f"or corrupted); discarded, downloading it again", RuntimeWarning, stacklevel=2)
            local.unlink(missing_ok=True)
        if str(local) not in self._verified:
            download(src.fs, remote, meta["sha256"], local, f"{src.uri}/{meta['file']}")
            self._verified.add(str(local))
        return str(local)

    def _rows(self, s: int, sh: int) -> np.ndarray:
        """(sequences, row_len) memory-mapped array of one shard."""
        key = (s, sh)
        arr = self._open.get(key)  # evicted first-in first-out: windows move through the shards in order
        if arr is not None:
            return arr
        path = self._local_path(s, sh)
        meta = self.sources[s].shards[sh]
        try:
            reader = pa.ipc.open_file(pa.memory_map(path))
            col = reader.get_batch(0).column(0)
            flat = col.values.to_numpy(zero_copy_only=True)
        except (pa.ArrowInvalid, pa.ArrowIOError, IndexError, OSError) as e:
            raise ShardError(f"{path}: cannot read shard ({e}); it is truncated or corrupted: re-run `gptscale shard`") from None
        if reader.num_record_batches != 1 or len(col) != meta["sequences"] or col.type.list_size != self.row_len:
            raise ShardError(f"{path}: holds {len(col)} rows of {col.type.list_size}, manifest says "
                             f"{meta['sequences']} of {self.row_len}; re-run `gptscale shard`")
        arr = flat.reshape(len(col), self.row_len)
        with self._lock:
            self._open[key] = arr
            while len(self._open) > self.max_open_shards:
                self._open.popitem(last=False)
        return arr

    def _prefetch(self, s: int, shards: list[int]) -> None:
        """Fetch (and verify) the next window's shards in a background thread."""
        if not shards:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch")
        for sh in shards:
            self._pool.submit(self._local_path, s, sh)


def _dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
