"""Corpus -> packed token shards (Arrow IPC files) + manifest.json.

Documents are read in a fixed order (sources sorted, documents in file order), tokenized in worker
processes (results consumed in order, so the output is byte-identical whatever the worker count),
split into train/val by a seeded hash of the document's text, joined with the end-of-document
token and packed into rows of seq_len + 1 tokens; consecutive rows overlap by one token, so a row gives
seq_len inputs and seq_len next-token targets and no token is lost at row boundaries.

Each shard is an Arrow IPC file with one column ``tokens: fixed_size_list<uint16|uint32>[seq_len + 1]``,
written to a temporary name and renamed. A journal (``.progress.json`` + ``.progress.npz``) is saved after
every shard, so a killed run, rerun with the same arguments, resumes after the last complete shard.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from gptscale.data.corpus import expand_inputs, iter_documents
from gptscale.data.manifest import FORMAT, VERSION, ShardError
from gptscale.files import atomic_write_bytes, atomic_write_json, sha256_file
from gptscale.runtime import faults
from gptscale.tokenizer import Tokenizer

# Documents per worker task: up to TASK_CHARS characters (at least one document), fixed, so the output does
# not depend on the worker count.
TASK_CHARS = 1 << 20


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
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=str(seed).encode()[:64]).digest()
    return struct.unpack("<Q", h)[0] / 2**64 < fraction


@dataclass
class Packer:
    """Packs one split's token stream into rows of seq_len + 1 and writes full shards."""

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

    def finish(self) -> int:
        """Write the last (shorter) shard; returns the leftover tokens that fill no row (dropped)."""
        rows = (self.n_pending - 1) // self.seq_len if self.n_pending > 0 else 0
        if rows > 0:
            self._write(rows)
        dropped = self.n_pending
        self.pending, self.n_pending = [], 0
        return dropped if rows == 0 or dropped > 1 else 0

    def _write(self, rows: int) -> None:
        flat = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        need = rows * self.seq_len + 1
        starts = np.arange(rows) * self.seq_len
        table = flat[starts[:, None] + np.arange(self.seq_len + 1)]  # (rows, seq_len + 1), overlap 1
        rest = flat[need - 1:]  # the last token of this shard starts the next row
        self.pending, self.n_pending = [rest.copy()], len(rest)
        name = f"{self.split}-{len(self.shards):05d}.arrow"
        data = encode_shard(table, self.seq_len)
        atomic_write_bytes(self.out / name, data)
        self.shards.append({"file": name, "sequences": rows, "tokens": rows * self.seq_len,
                            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        faults.after_shard(self.split, len(self.shards))


def encode_shard(rows: np.ndarray, seq_len: int) -> bytes:
    """Arrow IPC file bytes for a (n, seq_len + 1) token array."""
    values = pa.array(rows.reshape(-1))
    col = pa.FixedSizeListArray.from_arrays(values, rows.shape[1])
    schema = pa.schema([pa.field("tokens", col.type)],
                       metadata={"format": FORMAT, "version": str(VERSION), "seq_len": str(seq_len)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(pa.record_batch([col], schema=schema))
    return sink.getvalue().to_pybytes()


# ------------------------------------------------------------------------------------ workers

_TOK: Tokenizer | None = None
_THREADS = 1


def _init_worker(tokenizer_dir: str, threads: int = 1) -> None:
    global _TOK, _THREADS
    _TOK, _THREADS = Tokenizer.load(tokenizer_dir), threads


def _encode(texts: list[str]) -> list[np.ndarray]:
    assert _TOK is not None
    return [np.asarray(ids, dtype=np.uint32) for ids in _TOK.encode_batch(texts, num_threads=_THREADS)]


def _doc_batches(docs: Iterator, skip: int) -> Iterator[list]:
    batch, chars = [], 0
    for n, doc in enumerate(docs):
        if n < skip:
            continue
        batch.append(doc)
        chars += len(doc.text)
        if chars >= TASK_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


# ------------------------------------------------------------------------------------- driver


def write_shards(
    inputs: list[str], tokenizer_dir: str | Path, out_dir: str | Path, *, seq_len: int = 512,
    val_fraction: float = 0.0, seed: int = 1234, shard_size_mb: float = 128.0, workers: int = 0,
    text_field: str = "text", gutenberg: bool = False, errors: str = "strict", progress: bool = True,
) -> dict:
    """Tokenize and pack a corpus into `out_dir`; returns the manifest. Resumes a killed run."""
    tok = Tokenizer.load(tokenizer_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 2**16 else np.uint32)
    rows_per_shard = max(1, int(shard_size_mb * 2**20) // ((seq_len + 1) * dtype.itemsize))
    sources = expand_inputs(list(inputs))
    spec = ShardSpec(sources, tok.hash, seq_len, val_fraction, seed, rows_per_shard, text_field, gutenberg, errors)
    if (out / "manifest.json").exists():
        existing = json.loads((out / "manifest.json").read_text())
        if existing.get("spec") == vars(spec):
            return existing  # already complete
        raise ShardError(f"{out} already holds shards made with other settings; choose another --out")
    packers = {s: Packer(s, out, seq_len, rows_per_shard, dtype) for s in ("train", "val")}
    stats = _restore(_load_journal(out, spec), packers)
    docs = iter_documents(sources, text_field=text_field, gutenberg=gutenberg, errors=errors)
    batches = _doc_batches(docs, skip=stats["documents"] + stats["empty"])
    n_workers = workers if workers > 0 else max(1, (os.cpu_count() or 1))
    pool = get_context("spawn").Pool(n_workers, _init_worker, (str(tokenizer_dir),)) if n_workers > 1 else None
    if pool is None:  # one process: let sentencepiece use every core on its own
        _init_worker(str(tokenizer_dir), threads=-1)
    bar = _progress(progress)
    try:
        for batch_docs, ids in _encoded(batches, pool, window=4 * n_workers):
            for doc, tokens in zip(batch_docs, ids):
                split = _count(stats, doc, tokens, seed, val_fraction)
                if split and packers[split].add(np.append(tokens, tok.eod_id)):
                    _save_journal(out, spec, stats, packers)
            if bar is not None:
                bar.update(sum(len(t) + 1 for t in ids))
    finally:
        if pool:
            pool.terminate()
        if bar is not None:
            bar.close()
    dropped = {s: p.finish() for s, p in packers.items()}
    manifest = _manifest(spec, tok, stats, packers, dropped, dtype)
    atomic_write_json(out / "manifest.json", manifest)
    for name in (".progress.json", ".progress.npz"):
        (out / name).unlink(missing_ok=True)
    return manifest


def _restore(state: dict | None, packers: dict[str, Packer]) -> dict:
    """The journal's document counts, its shards and pending rows put back into the packers (a resumed run)."""
    if not state:
        return {"documents": 0, "empty": 0, "per_source": {}}
    for s, p in packers.items():
        p.shards = state["shards"][s]
        p.pending = [state["pending"][s]]
        p.n_pending = len(p.pending[0])
    return state["stats"]


def _count(stats: dict, doc, tokens: np.ndarray, seed: int, val_fraction: float) -> str | None:
    """Count a document in `stats`; its split ('train' / 'val'), or None when it is empty (skipped)."""
    src = stats["per_source"].setdefault(doc.source, {"documents": 0, "empty": 0})
    if len(tokens) == 0 or not doc.text.strip():
        stats["empty"] += 1
        src["empty"] += 1
        return None
    stats["documents"] += 1
    src["documents"] += 1
    return "val" if is_val(seed, doc.text, val_fraction) else "train"


def _encoded(batches: Iterator[list], pool, window: int) -> Iterator[tuple[list, list[np.ndarray]]]:
    """(documents, token arrays) per batch, in input order, with at most `window` batches in flight."""
    if pool is None:
        for b in batches:
            yield b, _encode([d.text for d in b])
        return
    inflight: deque = deque()
    for b in batches:
        inflight.append((b, pool.apply_async(_encode, ([d.text for d in b],))))
        if len(inflight) >= window:
            done, res = inflight.popleft()
            yield done, res.get()
    while inflight:
        done, res = inflight.popleft()
        yield done, res.get()


def _progress(enabled: bool):
    if not enabled:
        return None
    return tqdm(unit="tok", unit_scale=True, desc="shard", smoothing=0.1, mininterval=1.0)


def _manifest(spec: ShardSpec, tok: Tokenizer, stats: dict, packers: dict, dropped: dict, dtype) -> dict:
    splits = {}
    for s, p in packers.items():
        splits[s] = {"shards": p.shards, "sequences": sum(x["sequences"] for x in p.shards),
                     "tokens": sum(x["tokens"] for x in p.shards), "dropped_tokens": dropped[s]}
    return {
        "format": FORMAT, "version": VERSION, "seq_len": spec.seq_len, "row_len": spec.seq_len + 1,
        "dtype": dtype.name,
        "tokenizer": {"hash": tok.hash, "vocab_size": tok.vocab_size, "eod_id": tok.eod_id, "path": str(tok.path)},
        "documents": {"kept": stats["documents"], "empty_skipped": stats["empty"]},
        "sources": [{"path": k, **v} for k, v in stats["per_source"].items()],
        "splits": splits, "spec": vars(spec),
    }


# ------------------------------------------------------------------------------------ journal


def _save_journal(out: Path, spec: ShardSpec, stats: dict, packers: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{s: np.concatenate(p.pending) if p.pending else np.zeros(0, p.dtype) for s, p in packers.items()})
    atomic_write_bytes(out / ".progress.npz", buf.getvalue())
    atomic_write_json(out / ".progress.json", {"spec": vars(spec), "stats": stats,
                                               "shards": {s: p.shards for s, p in packers.items()}})


def _load_journal(out: Path, spec: ShardSpec) -> dict | None:
    j, npz = out / ".progress.json", out / ".progress.npz"
    if not (j.exists() and npz.exists()):
        return None
    state = json.loads(j.read_text())
    if state["spec"] != vars(spec):
        raise FileExistsError(
            f"{out} holds an unfinished run with other settings ({j}); rerun with the same arguments to resume "
            f"or choose another --out")
    with np.load(npz) as z:
        state["pending"] = {s: z[s] for s in ("train", "val")}
    for s, shards in state["shards"].items():  # every journaled shard must be on disk, intact
        for sh in shards:
            if sha256_file(out / sh["file"]) != sh["sha256"]:
                raise RuntimeError(f"{out / sh['file']}: does not match the journal; delete {out} and rerun")
    return state


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
    if not 0.0 <= a.val_fraction < 1.0:
        p.error(f"--val-fraction must be in [0, 1), got {a.val_fraction}")
    if a.seq_len < 1:
        p.error(f"--seq-len must be >= 1, got {a.seq_len}")
    m = write_shards(a.input, a.tokenizer, a.out, seq_len=a.seq_len, val_fraction=a.val_fraction, seed=a.seed,
                     shard_size_mb=a.shard_size_mb, workers=a.workers, text_field=a.text_field,
                     gutenberg=a.gutenberg, errors=a.errors)
    tr, va = m["splits"]["train"], m["splits"]["val"]
    print(f"{a.out}: {m['documents']['kept']} documents ({m['documents']['empty_skipped']} empty skipped); "
          f"train {tr['tokens']:,} tokens in {len(tr['shards'])} shards, val {va['tokens']:,} tokens in "
          f"{len(va['shards'])} shards; {m['dtype']}, seq_len {m['seq_len']}")
    return 0
