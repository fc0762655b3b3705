"""Data-path benchmark on the Gutenberg corpus: shard writer, ShardStream loader, memory.

Figures (last line, JSON):
  writer_tok_s            `gptscale shard` end to end (read, clean, tokenize in workers, pack, write, hash)
  sp_encode_tok_s         sentencepiece's own encode of the same cleaned documents, same core count
  writer_vs_sp            writer_tok_s / sp_encode_tok_s (target >= 0.8)
  loader_tok_s            ShardStream through ShardLoader (a torch DataLoader), shuffled, int64 batches,
                          num_workers=0: what a training rank runs on this 2-core machine
  loader_tok_s_2workers   the same with 2 DataLoader worker processes (IPC-bound on 2 cores)
  raw_tok_s               the same shards read shuffled with plain numpy on memory-mapped files, whole batch
                          per fetch (the floor any loader pays)
  ratio                   loader_tok_s / raw_tok_s (target >= 0.5)
  rss_mb_1x, rss_mb_10x   loader peak anonymous RSS (file-backed pages excluded) on the corpus and on a
                          10x larger shard set (hard links), each in a fresh process; rss_mb_base: after imports

    python bench/data.py [--data ../shared/data] [--workdir runs/bench-data]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# gptscale, torch, pyarrow and sentencepiece are imported inside the functions that use them, on purpose: the
# writer's spawn workers re-import this script (as __mp_main__) and would each pay for them inside the timed
# writer run, and the RSS probe's baseline ("after imports") must hold only what the loader loads, in its order
# (pyarrow or gptscale.data.manifest imported up here adds 1.2 MB to it).

REPO = Path(__file__).resolve().parent.parent


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def manifest(shards: Path) -> dict:
    """The shard set's manifest.json, read and checked by gptscale."""
    from gptscale.data.manifest import read_manifest  # lazy: see the imports

    return read_manifest(shards)[0]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_writer(books: list[str], tok_dir: Path, out: Path, seq_len: int) -> tuple[float, dict]:
    from gptscale.data.shards import write_shards  # lazy: see the imports

    shutil.rmtree(out, ignore_errors=True)
    m, dt = timed(lambda: write_shards(books, tok_dir, out, seq_len=seq_len, gutenberg=True, shard_size_mb=8,
                                       workers=os.cpu_count() or 1, progress=False))
    tokens = m["splits"]["train"]["tokens"] + m["splits"]["train"]["dropped_tokens"] + m["documents"]["kept"]
    return tokens / dt, m


def bench_sp(books: list[str], tok_dir: Path) -> float:
    import sentencepiece as spm  # lazy, like the next: see the imports

    from gptscale.data.corpus import iter_documents

    docs = [d.text for d in iter_documents(books, gutenberg=True)]
    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
    ids, dt = timed(lambda: sp.encode(docs, num_threads=os.cpu_count() or 1))
    return sum(len(x) + 1 for x in ids) / dt  # + 1: the end-of-document token the writer adds


def bench_raw(shards: Path, batch: int, n_batches: int, seed: int = 0) -> float:
    """Plain numpy on memory-mapped shards: a global shuffled (shard, row) order, one gather per batch."""
    import pyarrow as pa  # lazy, like the next: see the imports
    import torch

    m = manifest(shards)
    arrs = []
    for sh in m["splits"]["train"]["shards"]:
        col = pa.ipc.open_file(pa.memory_map(str(shards / sh["file"]))).get_batch(0).column(0)
        arrs.append(col.values.to_numpy().reshape(len(col), m["row_len"]))
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrs])])
    order = np.random.default_rng(seed).permutation(offsets[-1])
    t0 = time.perf_counter()
    for k in range(n_batches):
        ids = order[(k * batch) % len(order):][:batch]
        shard = np.searchsorted(offsets, ids, side="right") - 1
        out = np.empty((len(ids), m["row_len"]), np.int64)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = arrs[s][ids[sel] - offsets[s]]
        torch.from_numpy(out)
    return n_batches * batch * m["seq_len"] / (time.perf_counter() - t0)


def bench_loader(shards: Path, batch: int, n_batches: int, workers: int) -> float:
    from gptscale.data import ShardLoader, ShardStream  # lazy (torch): see the imports

    seq_len = manifest(shards)["seq_len"]
    loader = ShardLoader(ShardStream(shards, batch_size=batch, rank=0, world_size=1, seed=0), num_workers=workers)
    it = iter(loader)
    next(it)  # start-up (workers, first shard verification) is not throughput
    t0 = time.perf_counter()
    for _ in range(n_batches):
        b = next(it)
    assert b.dtype.is_floating_point is False and b.shape == (batch, seq_len + 1)
    return n_batches * batch * seq_len / (time.perf_counter() - t0)


def rss_probe(shards: Path, batch: int, n_batches: int) -> dict:
    """Run in a fresh process: peak anonymous RSS while streaming n_batches."""
    from gptscale.data import ShardLoader, ShardStream  # lazy (torch): see the imports

    base = rss_anon_mb()
    peak = base
    for k, _ in enumerate(ShardLoader(ShardStream(shards, batch_size=batch, rank=0, world_size=1, seed=0))):
        if k % 25 == 0:
            peak = max(peak, rss_anon_mb())
        if k == n_batches:
            break
    return {"base": base, "peak": max(peak, rss_anon_mb())}


def make_10x(shards: Path, out: Path) -> Path:
    """A shard set 10x larger: each shard hard-linked 10 times under new names, listed in a new manifest."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    m = manifest(shards)
    new = []
    for rep in range(10):
        for sh in m["splits"]["train"]["shards"]:
            name = f"train-r{rep}-{sh['file']}"
            os.link(shards / sh["file"], out / name)
            new.append({**sh, "file": name})
    m["splits"]["train"]["shards"] = new
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def probe_in_subprocess(shards: Path, batch: int, n_batches: int) -> dict:
    p = subprocess.run([sys.executable, __file__, "--rss-probe", str(shards), "--batch", str(batch),
                        "--batches", str(n_batches)], capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("GPTSCALE_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench-data"))
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8, help="sequences per batch (one rank)")
    ap.add_argument("--batches", type=int, default=1500)
    ap.add_argument("--rss-probe", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_probe:
        print(json.dumps(rss_probe(Path(a.rss_probe), a.batch, a.batches)))
        return
    gut = Path(a.data) / "corpus" / "gutenberg"
    if not gut.is_dir():
        sys.exit(f"bench/data.py: {gut} not found; pass --data to the shared data folder")
    books = [str(gut)]
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tok_dir = work / f"tok{a.vocab_size}"
    if not (tok_dir / "tokenizer.model").exists():
        from gptscale.tokenizer import train_tokenizer  # lazy: see the imports

        train_tokenizer(books, tok_dir, a.vocab_size, gutenberg=True, sample_sentences=300_000)
    res: dict = {}
    writer_tok_s, m = bench_writer(books, tok_dir, work / "shards", a.seq_len)
    res["writer_tok_s"] = round(writer_tok_s)
    res["sp_encode_tok_s"] = round(bench_sp(books, tok_dir))
    res["writer_vs_sp"] = round(writer_tok_s / res["sp_encode_tok_s"], 3)
    print(f"writer {res['writer_tok_s']:,} tok/s vs sentencepiece encode {res['sp_encode_tok_s']:,} tok/s "
          f"({res['writer_vs_sp']:.2f}x); {m['splits']['train']['tokens']:,} train tokens", flush=True)
    shards = work / "shards"
    raw, loader = [], []
    for _ in range(3):  # alternate, keep the best of each (least disturbed by the rest of the machine)
        raw.append(bench_raw(shards, a.batch, a.batches))
        loader.append(bench_loader(shards, a.batch, a.batches, workers=0))
    res["raw_tok_s"], res["loader_tok_s"] = round(max(raw)), round(max(loader))
    res["ratio"] = round(res["loader_tok_s"] / res["raw_tok_s"], 3)
    res["loader_tok_s_2workers"] = round(bench_loader(shards, a.batch, a.batches, workers=2))
    print(f"loader {res['loader_tok_s']:,} tok/s, raw numpy {res['raw_tok_s']:,} tok/s (ratio {res['ratio']:.2f}); "
          f"2 workers {res['loader_tok_s_2workers']:,} tok/s", flush=True)
    one = probe_in_subprocess(shards, a.batch, a.batches)
    ten = probe_in_subprocess(make_10x(shards, work / "shards-10x"), a.batch, a.batches)
    res.update(rss_mb_base=round(one["base"], 1), rss_mb_1x=round(one["peak"], 1), rss_mb_10x=round(ten["peak"], 1))
    print(f"peak anonymous RSS: 1x {res['rss_mb_1x']} MB, 10x {res['rss_mb_10x']} MB (after imports "
          f"{res['rss_mb_base']} MB)", flush=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
