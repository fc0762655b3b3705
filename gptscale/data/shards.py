"""Corpus -> packed token shards (Arrow IPC files) + manifest.json.

Documents are read in a fixed order (sources sorted, documents in file order), tokenized in worker
processes (results consumed in order, so the output is byte-identical whatever the worker count),
split into train/val by a seeded hash of the document's text, joined with the end-of-document
token and packed into rows of seq_len + 1 tokens; consecutive rows overlap by one token, so a row gives
seq_len inputs and seq_len next-token targets and no token is lost at row boundaries.

Each shard is an Arrow IPC file with one column ``tokens: fixed_size_list<uint16|uint32>[seq_len + 1]``,
written to a temporary name and renamed. One journal file (gptscale.data.journal) is saved atomically after
every document that completed a shard, so a killed run, rerun with the same arguments, resumes after the last
journaled shard and produces the very bytes an uninterrupted run does; it first removes the temporary files
the killed run left.

Memory is bounded by the chunk sizes, not by the longest document: a .txt file is read and decoded in pieces,
twice (first for its train/val hash, then for its tokens; pieces.text_streams), a document longer than
pieces.PIECE_CHARS is tokenized in pieces cut right before a space that follows a non-space (where neither
sentencepiece, with split_by_whitespace, nor a GPT-2-style pre-tokenizer ever joins two tokens, so the tokens
are those of the whole text), and the tokens are streamed into the packer, which holds less than one shard.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from gptscale.data import journal, pieces
from gptscale.data.corpus import expand_inputs
from gptscale.data.manifest import FORMAT, VERSION, ShardError
from gptscale.data.pieces import Piece, TextStream, text_pieces, text_streams  # noqa: F401 (text_pieces: re-exported)
from gptscale.tokenizer import Tokenizer


@dataclass
class ShardSpec:
    """What `gptscale shard` was asked to do (compared on rerun to decide whether to resume)."""

    inputs: list[str]
    tokenizer_hash: str
    seq_len: int
    val_fraction: float
    seed: int
    rows_per_shard: int
    text_field: str
    gutenberg: bool
    errors: str


def is_val(seed: int, text: str, fraction: float) -> bool:
    """Seeded train/val assignment of one document by its content: independent of file paths and order,
    and duplicate documents land in the same split (no train/val leakage through copies)."""
    if fraction <= 0:
        return False
    h = _hasher(seed)
    _hash_update(h, text)
    return _below(h, fraction)


def split_of(doc: TextStream, seed: int, fraction: float) -> str | None:
    """'train' or 'val' (`is_val` of its text) for a document, None for a blank one: one pass over its text,
    chunk by chunk (the whole text is never held)."""
    h = _hasher(seed) if fraction > 0 else None
    blank = True
    for text in doc.chunks():
        blank = blank and (not text or text.isspace())  # = not text.strip(), without a copy
        if h is not None:
            _hash_update(h, text)
    if blank:
        return None
    return "val" if h is not None and _below(h, fraction) else "train"


def _hasher(seed: int):
    return hashlib.blake2b(digest_size=8, key=str(seed).encode()[:64])


def _hash_update(h, text: str) -> None:
    for i in range(0, len(text), 1 << 20):  # the same digest as one update, without a copy of a long text
        h.update(text[i:i + (1 << 20)].encode("utf-8", "surrogatepass"))


def _below(h, fraction: float) -> bool:
    return struct.unpack("<Q", h.digest())[0] / 2**64 < fraction


@dataclass
class Packer:
    """Packs one split's token stream into rows of seq_len + 1 and writes full shards (holds less than one
    shard of tokens between calls)."""

    split: str
    out: Path
    seq_len: int
    rows_per_shard: int
    dtype: np.dtype
    pending: list[np.ndarray] = field(default_factory=list)
    n_pending: int = 0
    shards: list[dict] = field(default_factory=list)

    def add(self, tokens: np.ndarray) -> int:
        """Append tokens; write every full shard. Returns how many shards were written."""
        self.pending.append(tokens.astype(self.dtype, copy=False))
        self.n_pending += len(tokens)
        written = 0
        while self.n_pending >= self.rows_per_shard * self.seq_len + 1:
            self._write(self.rows_per_shard)
            written += 1
        return written

    def tokens(self) -> np.ndarray:
        """The pending tokens as one array (kept as such: no second copy for the journal)."""
        if len(self.pending) != 1:
            self.pending = [np.concatenate(self.pending) if self.pending else np.zeros(0, self.dtype)]
        return self.pending[0]

    def finish(self) -> int:
        """Write the last (shorter) shard; returns the leftover tokens that fill no row (dropped)."""
        rows = (self.n_pending - 1) // self.seq_len if self.n_pending > 0 else 0
        if rows > 0:
            self._write(rows)
        dropped = self.n_pending
        self.pending, self.n_pending = [], 0
        return dropped if rows == 0 or dropped > 1 else 0

    def _write(self, rows: int) -> None:
        need = rows * self.seq_len + 1
        flat = self.tokens()
        # (rows, seq_len + 1), consecutive rows overlapping by one token; one contiguous copy, no index array
        table = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(flat[:need], self.seq_len + 1)
                                     [::self.seq_len])
        rest = flat[need - 1:]  # the last token of this shard starts the next row
        self.pending, self.n_pending = [rest.copy()], len(rest)
        del flat
        name = f"{self.split}-{len(self.shards):05d}.arrow"
        data = encode_shard(table, self.seq_len)
        del table
        journal.write_atomic(self.out / name, data, journal.KILL_SHARD_TMP, journal.KILL_SHARD)
        self.shards.append({"file": name, "sequences": rows, "tokens": rows * self.seq_len,
                            "bytes": data.size, "sha256": hashlib.sha256(data).hexdigest()})


def encode_shard(rows: np.ndarray, seq_len: int) -> pa.Buffer:
    """Arrow IPC file bytes (a pyarrow Buffer: bytes-like, no extra copy) for a (n, seq_len + 1) token array."""
    values = pa.array(rows.reshape(-1))
    col = pa.FixedSizeListArray.from_arrays(values, rows.shape[1])
    schema = pa.schema([pa.field("tokens", col.type)],
                       metadata={"format": FORMAT, "version": str(VERSION), "seq_len": str(seq_len)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(pa.record_batch([col], schema=schema))
    return sink.getvalue()


# ------------------------------------------------------------------------------------- driver

def write_shards(
    inputs: list[str], tokenizer_dir: str | Path, out_dir: str | Path, *, seq_len: int = 512,
    val_fraction: float = 0.0, seed: int = 1234, shard_size_mb: float = 128.0, workers: int = 0,
    text_field: str = "text", gutenberg: bool = False, errors: str = "strict", progress: bool = True,
) -> dict:
    """Tokenize and pack a corpus into `out_dir`; returns the manifest. Resumes a killed run."""
    _check_args(seq_len, val_fraction, shard_size_mb, workers)
    tok = _load_tokenizer(tokenizer_dir)
    out = _output_folder(out_dir)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 2**16 else np.uint32)
    rows_per_shard = max(1, int(shard_size_mb * 2**20) // ((seq_len + 1) * dtype.itemsize))
    sources = expand_inputs(list(inputs))
    spec = vars(ShardSpec(sources, tok.hash, seq_len, val_fraction, seed, rows_per_shard, text_field, gutenberg,
                          errors))
    done = _finished(out, spec)
    if done is not None:
        return done
    packers = {s: Packer(s, out, seq_len, rows_per_shard, dtype) for s in journal.SPLITS}
    stats = _restore(journal.load(out, spec), packers)
    docs = text_streams(sources, text_field=text_field, gutenberg=gutenberg, errors=errors)
    batches = pieces.piece_batches(docs, stats["documents"] + stats["empty"],
                                   functools.partial(split_of, seed=seed, fraction=val_fraction))
    n_workers = workers if workers > 0 else max(1, (os.cpu_count() or 1))
    pool = get_context("spawn").Pool(n_workers, pieces.init_worker, (str(tokenizer_dir),)) if n_workers > 1 else None
    if pool is None:  # one process: let sentencepiece use every core on its own
        pieces.init_worker(str(tokenizer_dir), threads=-1)
    bar = _Progress() if progress else None
    try:
        _pack(pieces.encoded(batches, pool, window=4 * n_workers), out, spec, stats, packers, tok.eod_id, bar)
    finally:
        if pool:
            pool.terminate()
        if bar is not None:
            bar.close()
    dropped = {s: p.finish() for s, p in packers.items()}
    manifest = _manifest(spec, tok, stats, packers, dropped, dtype)
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()  # = files.atomic_write_json's bytes
    journal.write_atomic(out / "manifest.json", data, journal.KILL_MANIFEST_TMP, journal.KILL_MANIFEST)
    journal.remove_journal(out)
    return manifest


def _pack(encoded: Iterator[tuple[list[Piece], list[np.ndarray]]], out: Path, spec: dict, stats: dict,
          packers: dict[str, Packer], eod_id: int, bar) -> None:
    """Stream each document's tokens (piece by piece) into its split's packer; journal after every document
    that completed a shard."""
    split, n_tokens, written = None, 0, 0
    for batch, ids in encoded:
        for piece, tokens in zip(batch, ids):
            if piece.first:
                split, n_tokens, written = piece.split, 0, 0
            if split is not None and len(tokens):
                written += packers[split].add(tokens)
            n_tokens += len(tokens)
            if piece.last:
                _count(stats, piece.doc, kept=split is not None and n_tokens > 0)
                if split is not None and n_tokens:
                    written += packers[split].add(np.array([eod_id], np.uint32))
                if written:
                    journal.save(out, spec, stats, {s: p.shards for s, p in packers.items()},
                                 {s: p.tokens() for s, p in packers.items()})
        if bar is not None:
            bar.update(sum(len(t) for t in ids))


def _check_args(seq_len: int, val_fraction: float, shard_size_mb: float, workers: int) -> None:
    """Settings out of range: a ShardError naming the flag (also for the Python API)."""
    for ok, flag, want, got in ((seq_len >= 1, "--seq-len", ">= 1", seq_len),
                                (0.0 <= val_fraction < 1.0, "--val-fraction", "in [0, 1)", val_fraction),
                                (0.0 < shard_size_mb < float("inf"), "--shard-size-mb", "> 0", shard_size_mb),
                                (workers >= 0, "--workers", ">= 0 (0: one per CPU)", workers)):
        if not ok:
            raise ShardError(f"{flag} must be {want}, got {got}; fix the flag (write_shards: the same argument)")


def _load_tokenizer(path: str | Path) -> Tokenizer:
    try:
        return Tokenizer.load(path)
    except OSError as e:  # a folder we may not read, a file where a directory should be ...
        raise ShardError(f"--tokenizer {path}: cannot read it ({type(e).__name__}: {e}); pass a readable folder "
                         f"written by 'gptscale tokenizer train' or a local Hugging Face tokenizer folder") from None


def _output_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ShardError(f"--out {out}: exists and is not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ShardError(f"--out {out}: cannot create it ({type(e).__name__}: {e}); choose a folder you can "
                         f"write") from None
    return out


def _finished(out: Path, spec: dict) -> dict | None:
    """Clean up after a killed run (its temp files, a journal left by a run killed after its manifest); the
    manifest when this spec's run is already complete, None when there is work to do."""
    journal.remove_stale_temps(out)
    for name in journal.LEGACY_JOURNAL:  # the old two-file journal is never trusted: start over
        (out / name).unlink(missing_ok=True)
    path = out / "manifest.json"
    if not path.exists():
        return None
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ShardError(f"{path}: unreadable ({type(e).__name__}: {e}); delete {out} and rerun, or choose "
                         f"another --out") from None
    if not isinstance(existing, dict) or existing.get("spec") != spec:
        raise ShardError(f"{out} already holds shards made with other settings ({path}); choose another --out "
                         f"(or delete {out} to remake them)")
    journal.remove_journal(out)  # complete: a journal left here was killed before it was removed
    return existing


def _restore(state: dict | None, packers: dict[str, Packer]) -> dict:
    """The journal's document counts, its shards and pending rows put back into the packers (a resumed run)."""
    if not state:
        return {"documents": 0, "empty": 0, "per_source": {}}
    for s, p in packers.items():
        p.shards = state["shards"][s]
        p.pending = [state["pending"][s]]
        p.n_pending = len(p.pending[0])
    return state["stats"]


def _count(stats: dict, doc: TextStream, kept: bool) -> None:
    """Count a document in `stats`: kept, or empty (skipped)."""
    key = "documents" if kept else "empty"
    stats[key] += 1
    stats["per_source"].setdefault(doc.source, {"documents": 0, "empty": 0})[key] += 1


class _Progress:
    """A token counter on stderr, shown from the first tokens on (an input refused up front prints only the
    error)."""

    def __init__(self) -> None:
        self.bar = None

    def update(self, n: int) -> None:
        if self.bar is None:
            self.bar = tqdm(unit="tok", unit_scale=True, desc="shard", smoothing=0.1, mininterval=1.0)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _manifest(spec: dict, tok: Tokenizer, stats: dict, packers: dict, dropped: dict, dtype) -> dict:
    splits = {}
    for s, p in packers.items():
        splits[s] = {"shards": p.shards, "sequences": sum(x["sequences"] for x in p.shards),
                     "tokens": sum(x["tokens"] for x in p.shards), "dropped_tokens": dropped[s]}
    return {
        "format": FORMAT, "version": VERSION, "seq_len": spec["seq_len"], "row_len": spec["seq_len"] + 1,
        "dtype": dtype.name,
        "tokenizer": {"hash": tok.hash, "vocab_size": tok.vocab_size, "eod_id": tok.eod_id, "path": str(tok.path)},
        "documents": {"kept": stats["documents"], "empty_skipped": stats["empty"]},
        "sources": [{"path": k, **v} for k, v in stats["per_source"].items()],
        "splits": splits, "spec": spec,
    }

def cli_shard(argv: list[str]) -> int:
    """`gptscale shard`: tokenize a corpus into packed Arrow shards + manifest.json."""
    p = argparse.ArgumentParser(prog="gptscale shard", description=cli_shard.__doc__)
    p.add_argument("--input", nargs="+", required=True, help="files, globs or folders (.txt .jsonl .parquet), "
                   "a datasets save_to_disk folder, or hf:NAME[:CONFIG][:SPLIT]")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (gptscale tokenizer train, or a local HF one)")
    p.add_argument("--out", required=True, help="output folder for shards and manifest.json")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per training sequence (rows hold seq_len + 1)")
    p.add_argument("--val-fraction", type=float, default=0.0, help="fraction of documents held out for validation")
    p.add_argument("--seed", type=int, default=1234, help="seed of the train/val document split")
    p.add_argument("--shard-size-mb", type=float, default=128.0, help="target size of one shard file")
    p.add_argument("--workers", type=int, default=0, help="tokenizer processes (0: one per CPU)")
    p.add_argument("--text-field", default="text", help="field/column holding the text in .jsonl/.parquet/datasets")
    p.add_argument("--gutenberg", action="store_true", help="strip Project Gutenberg licence header and footer")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict",
                   help="non-UTF-8 bytes: stop with an error (strict) or replace them with U+FFFD")
    a = p.parse_args(argv)
    m = write_shards(a.input, a.tokenizer, a.out, seq_len=a.seq_len, val_fraction=a.val_fraction, seed=a.seed,
                     shard_size_mb=a.shard_size_mb, workers=a.workers, text_field=a.text_field,
                     gutenberg=a.gutenberg, errors=a.errors)
    tr, va = m["splits"]["train"], m["splits"]["val"]
    print(f"{a.out}: {m['documents']['kept']} documents ({m['documents']['empty_skipped']} empty skipped); "
          f"train {tr['tokens']:,} tokens in {len(tr['shards'])} shards, val {va['tokens']:,} tokens in "
          f"{len(va['shards'])} shards; {m['dtype']}, seq_len {m['seq_len']}")
    return 0
