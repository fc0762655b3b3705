"""`gptscale shard` on real Gutenberg text: packing, manifest, determinism, crash + rerun, bad input."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gptscale.data.corpus import iter_documents
from gptscale.data.manifest import ShardError
from gptscale.data.shards import is_val, write_shards
from gptscale.files import sha256_file
from gptscale.tokenizer import Tokenizer
from helpers import SHARD_ARGS, fault_env, read_rows, run_cli


def unpack(rows: np.ndarray) -> np.ndarray:
    """Rows overlap by one token: the stream is row 0, then each next row without its first token."""
    return np.concatenate([rows[0], rows[1:, 1:].reshape(-1)]) if len(rows) else rows.reshape(-1)


def test_packing_reproduces_the_documents_exactly(shard_dir, tok_dir, shard_books):
    m = json.loads((shard_dir / "manifest.json").read_text())
    tok = Tokenizer.load(tok_dir)
    expected = {"train": [], "val": []}
    for doc in iter_documents([str(p) for p in shard_books], gutenberg=True):
        split = "val" if is_val(7, doc.text, 0.2) else "train"
        expected[split].extend(tok.encode(doc.text) + [tok.eod_id])
    assert expected["val"] and expected["train"], "seed 7 should put some books in each split"
    for split in ("train", "val"):
        stream = unpack(read_rows(shard_dir, split))
        info = m["splits"][split]
        # every token is kept except a tail shorter than one row
        assert len(stream) == len(expected[split]) - info["dropped_tokens"]
        assert info["dropped_tokens"] < 33
        np.testing.assert_array_equal(stream, np.array(expected[split][: len(stream)]))
        assert info["tokens"] == sum(s["tokens"] for s in info["shards"]) == (len(stream) - 1)


def test_manifest_describes_the_files(shard_dir, tok_dir, shard_books):
    m = json.loads((shard_dir / "manifest.json").read_text())
    assert m["format"] == "gptscale-shards" and m["version"] == 1
    assert m["seq_len"] == 32 and m["row_len"] == 33 and m["dtype"] == "uint16"
    assert m["tokenizer"]["hash"] == Tokenizer.load(tok_dir).hash
    assert [(Path(s["path"]).resolve(), s["documents"], s["empty"]) for s in m["sources"]] == \
        [(p.resolve(), 1, 0) for p in shard_books]
    assert m["documents"] == {"kept": 12, "empty_skipped": 0}
    shards = m["splits"]["train"]["shards"]
    assert len(shards) > 10  # ~0.02 MB shards
    for sh in shards + m["splits"]["val"]["shards"]:
        f = shard_dir / sh["file"]
        assert sha256_file(f) == sh["sha256"] and f.stat().st_size == sh["bytes"]
        assert sh["tokens"] == 32 * sh["sequences"]
    assert not [p for p in shard_dir.iterdir() if p.name.startswith(".")]  # no temp files or journal left


def test_same_bytes_whatever_the_worker_count(tmp_path, shard_dir, shard_books, tok_dir):
    out = tmp_path / "w1"
    write_shards([str(p) for p in shard_books], tok_dir, out, seq_len=32, val_fraction=0.2, seed=7,
                 gutenberg=True, shard_size_mb=0.02, workers=1, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in shard_dir.iterdir())
    for p in out.iterdir():
        assert p.read_bytes() == (shard_dir / p.name).read_bytes(), p.name


def test_killed_run_resumes_to_identical_output(tmp_path, shard_dir, shard_books, tok_dir):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "gptscale", "shard", "--input", *map(str, shard_books), "--tokenizer", str(tok_dir),
           "--out", str(out), *SHARD_ARGS, "--workers", "2"]
    # the writer SIGKILLs itself (process group included) right after renaming train shard 5 into place,
    # before its journal entry: the worst moment (a complete shard the journal does not know about)
    p = subprocess.run(cmd, env=dict(os.environ, **fault_env(kill_after_shard="train:5")), capture_output=True)
    assert p.returncode == -signal.SIGKILL
    assert (out / ".progress.json").exists() and not (out / "manifest.json").exists()
    assert len(list(out.glob("train-*.arrow"))) == 5
    run_cli("shard", "--input", *map(str, shard_books), "--tokenizer", str(tok_dir), "--out", str(out), *SHARD_ARGS)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in shard_dir.iterdir())
    for p in out.iterdir():
        assert p.read_bytes() == (shard_dir / p.name).read_bytes(), p.name


def test_rerun_with_other_settings_is_refused(shard_dir, shard_books, tok_dir):
    with pytest.raises(ShardError, match="other settings"):
        write_shards([str(p) for p in shard_books], tok_dir, shard_dir, seq_len=64, progress=False)


def test_empty_documents_are_skipped_and_counted(tmp_path, tok_dir, shard_books):
    src = tmp_path / "docs.jsonl"
    texts = [shard_books[0].read_text(encoding="utf-8-sig")[:5000], "", "   \n ", shard_books[1].read_text(encoding="utf-8-sig")[:3000]]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    m = write_shards([str(src)], tok_dir, tmp_path / "out", seq_len=16, progress=False, workers=1)
    assert m["documents"] == {"kept": 2, "empty_skipped": 2}
    assert m["sources"] == [{"path": str(src.resolve()), "documents": 2, "empty": 2}]
    tok = Tokenizer.load(tok_dir)
    flat = unpack(read_rows(tmp_path / "out", "train"))
    assert (flat == tok.eod_id).sum() >= 1  # documents joined by the end-of-document token


def test_uint32_when_the_vocab_does_not_fit_uint16(tmp_path, shard_books):
    from tokenizers import Tokenizer as HFTok
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(70_000)}
    text = shard_books[0].read_text(encoding="utf-8-sig")[:20000]
    for w in text.split():
        words.setdefault(w, len(words))
    words["<|endoftext|>"] = len(words)
    t = HFTok(WordLevel(words, unk_token="<|endoftext|>"))
    t.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>").save_pretrained(tmp_path / "hf")
    src = tmp_path / "a.txt"
    src.write_text(text)
    m = write_shards([str(src)], tmp_path / "hf", tmp_path / "out", seq_len=16, progress=False, workers=1)
    assert m["dtype"] == "uint32"
    rows = read_rows(tmp_path / "out", "train")
    assert rows.dtype == np.uint32 and rows.max() >= 70_000


def test_bad_utf8_names_file_and_offset(tmp_path, tok_dir):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"hello world " * 10 + b"\xff\xfe oops")
    with pytest.raises(ValueError, match=r"bad\.txt.*120"):
        write_shards([str(src)], tok_dir, tmp_path / "out", seq_len=8, progress=False, workers=1)
    m = write_shards([str(src)], tok_dir, tmp_path / "out2", seq_len=8, progress=False, workers=1, errors="replace")
    assert m["documents"]["kept"] == 1
