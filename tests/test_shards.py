"""`gptscale shard` on real Gutenberg text: packing, manifest, determinism, crash + rerun, bad input."""

import itertools
import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gptscale.data.corpus import iter_documents
from gptscale.data.manifest import ShardError
from gptscale.data.shards import is_val, text_pieces, write_shards
from gptscale.files import sha256_file
from gptscale.tokenizer import Tokenizer
from helpers import SHARD_ARGS, fault_env, gptscale, read_rows, run_cli


def assert_same_files(out: Path, reference: Path) -> None:
    """The same file names and bytes as `reference` (no temp file or journal left over)."""
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for p in out.iterdir():
        assert p.read_bytes() == (reference / p.name).read_bytes(), p.name


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
    assert_same_files(out, shard_dir)


def test_killed_run_resumes_to_identical_output(tmp_path, shard_dir, shard_books, tok_dir):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "gptscale", "shard", "--input", *map(str, shard_books), "--tokenizer", str(tok_dir),
           "--out", str(out), *SHARD_ARGS, "--workers", "2"]
    # the whole job (writer and its tokenizer workers) is SIGKILLed right after the 5th shard is renamed into
    # place, before the journal records it: a complete shard the journal does not know about
    p = subprocess.run(cmd, env=dict(os.environ, **fault_env(kill_job_at="shard.after_shard_rename:5")),
                       capture_output=True, start_new_session=True, check=False)
    assert p.returncode == -signal.SIGKILL
    assert (out / ".journal.npz").exists() and not (out / "manifest.json").exists()
    assert len(list(out.glob("*.arrow"))) == 5  # the 5th shard written (train or val)
    run_cli("shard", "--input", *map(str, shard_books), "--tokenizer", str(tok_dir), "--out", str(out), *SHARD_ARGS)
    assert_same_files(out, shard_dir)


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


def _whitespace_variants(text: str) -> str:
    """Real text with the whitespace a splitter can trip on: runs of spaces, tabs and newlines before spaces,
    leading spaces, non-ASCII next to spaces."""
    words = text.split(" ")
    seps = [" ", "  ", "   ", "\t ", "\n ", " \n", "\u00a0 ", " \u00e9"]
    return " " + "".join(w + seps[i % len(seps)] for i, w in enumerate(words))


def test_long_text_pieces_give_the_whole_texts_tokens(tok_dir, shard_books, shakespeare):
    tok = Tokenizer.load(tok_dir)
    # the normalizer keeps spaces as they are: no dummy prefix is added, leading and repeated spaces survive
    assert [tok.decode(tok.encode(t)) for t in ("a", " a", "  a", "\n a")] == ["a", " a", "  a", "\n a"]
    assert tok.encode(" a")[:1] != tok.encode("a")[:1]
    texts = [shakespeare.read_text(encoding="utf-8")[:300_000], shard_books[0].read_text(encoding="utf-8-sig"),
             _whitespace_variants(shard_books[1].read_text(encoding="utf-8-sig")[:100_000])]
    for text in texts:
        whole = tok.encode(text)
        for size in (1000, 4096, 50_000):
            pieces = list(text_pieces(text, size))
            assert "".join(pieces) == text and len(pieces) > len(text) // size
            assert all(len(p) <= size for p in pieces)
            assert all(p.startswith(" ") and not q[-1].isspace() for q, p in itertools.pairwise(pieces))
            assert [i for p in pieces for i in tok.encode(p)] == whole
        blind = [text[i:i + 1000] for i in range(0, len(text), 1000)]  # cuts anywhere: other tokens
        assert [i for p in blind for i in tok.encode(p)] != whole
    # no safe place to cut: cut at the size (the text is kept whole, only token boundaries may move there)
    assert list(text_pieces("x" * 2500, 1000)) == ["x" * 1000] * 2 + ["x" * 500]


def test_pieces_cut_while_the_text_streams_in_are_the_same(shakespeare):
    import random

    from gptscale.data.pieces import stream_pieces

    text = shakespeare.read_text(encoding="utf-8")[:200_000] + "x" * 5000 + " \n  \u00e9 end"
    rng = random.Random(0)
    for size in (1, 7, 1000, 4096, 50_000):
        cuts = sorted(rng.sample(range(len(text) + 1), 60)) + [len(text)] * 2  # empty chunks too
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert list(stream_pieces(chunks, size)) == list(text_pieces(text, size)), size
    assert list(stream_pieces([], 10)) == list(text_pieces("", 10)) == [""]


def test_documents_cut_into_pieces_give_the_same_shards(tmp_path, shard_dir, shard_books, tok_dir, monkeypatch):
    from gptscale.data import pieces

    monkeypatch.setattr(pieces, "PIECE_CHARS", 3000)  # every book is cut into dozens of pieces
    monkeypatch.setattr(pieces, "TASK_CHARS", 7000)
    out = tmp_path / "pieces"
    write_shards([str(p) for p in shard_books], tok_dir, out, seq_len=32, val_fraction=0.2, seed=7,
                 gutenberg=True, shard_size_mb=0.02, workers=1, progress=False)
    assert_same_files(out, shard_dir)


def _bad_inputs(tmp: Path, books: list[Path], tok_dir: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (gptscale shard arguments, what the one-line error must say)."""
    good = ["--input", str(books[0]), "--tokenizer", str(tok_dir), "--seq-len", "32"]
    (tmp / "bad.txt").write_bytes(b"fine text " * 20 + b"\xff oops")
    (tmp / "notatok").mkdir()
    (tmp / "file").write_text("x")
    (tmp / "corrupt").mkdir()
    (tmp / "corrupt" / ".journal.npz").write_bytes(b"PK\x03\x04 not a zip")
    return {
        "missing input": (["--input", str(tmp / "nope.txt"), *good[2:], "--out", str(tmp / "o1")],
                          r"nope\.txt.*no such file"),
        "tokenizer not a folder": ([*good[:2], "--tokenizer", str(tmp / "file"), "--out", str(tmp / "o2")],
                                   r"file.*no such directory"),
        "tokenizer folder without a tokenizer": ([*good[:2], "--tokenizer", str(tmp / "notatok"), "--out",
                                                  str(tmp / "o3")], r"notatok.*holds neither"),
        "non-UTF-8 text": (["--input", str(tmp / "bad.txt"), *good[2:], "--out", str(tmp / "o4")],
                           r"bad\.txt.*byte offset 200.*--errors replace"),
        "val fraction": ([*good, "--val-fraction", "1.5", "--out", str(tmp / "o5")], r"--val-fraction must be in"),
        "shard size": ([*good, "--shard-size-mb", "0", "--out", str(tmp / "o6")], r"--shard-size-mb must be > 0"),
        "out is a file": ([*good, "--out", str(tmp / "file")], r"file: exists and is not a folder"),
        "corrupt journal": ([*good, "--out", str(tmp / "corrupt")], r"\.journal\.npz: unreadable journal.*delete"),
    }


def test_bad_inputs_end_in_one_line_rc_2(tmp_path, shard_books, tok_dir):
    for name, (args, says) in _bad_inputs(tmp_path, shard_books, tok_dir).items():
        p = gptscale("shard", *args, expect_ok=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, (name, p.stderr)
        assert lines[0].startswith("gptscale shard: error: ") and re.search(says, lines[0]), (name, lines[0])


def test_unfinished_run_with_other_settings_is_refused(tmp_path, shard_books, tok_dir):
    out = tmp_path / "out"
    args = ["--input", *map(str, shard_books), "--tokenizer", str(tok_dir), "--out", str(out), *SHARD_ARGS]
    p = subprocess.run([sys.executable, "-m", "gptscale", "shard", *args, "--workers", "1"], capture_output=True,
                       env=dict(os.environ, **fault_env(kill_at="shard.after_journal_rename:2")), check=False)
    assert p.returncode == -signal.SIGKILL and (out / ".journal.npz").exists()
    p = gptscale("shard", *args, "--seq-len", "64", expect_ok=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert re.search(r"unfinished run made with other settings .*\.journal\.npz.*same arguments", p.stderr)
    gptscale("shard", *args)  # the same arguments resume it
    assert (out / "manifest.json").exists() and not (out / ".journal.npz").exists()


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak RSS (MB) of `cmd` and its children, measured by a fresh watcher process (getrusage of its children)."""
    watch = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if p.returncode == 0 else p.stderr)")
    p = subprocess.run([sys.executable, "-c", watch, *cmd], capture_output=True, text=True, timeout=600, check=True)
    assert p.stdout.strip().isdigit(), p.stdout[-3000:]
    return int(p.stdout) / 1024


@pytest.mark.slow
def test_writer_memory_is_bounded_by_chunks_not_the_longest_document(tmp_path, tok_dir, shard_books):
    words = " ".join(w for b in shard_books for w in b.read_text(encoding="utf-8-sig").split())
    size = 10 * 2**20
    text = (words * (size // len(words) + 1))[:size]
    line = tmp_path / "one_line.txt"  # one 10 MB document without a single newline
    line.write_text(text)
    many = tmp_path / "many.jsonl"  # the same text as 100 KB documents: the baseline, measured here
    many.write_text("".join(json.dumps({"text": text[i:i + 100_000]}) + "\n" for i in range(0, size, 100_000)))
    peaks = {src.name: peak_rss_mb([sys.executable, "-m", "gptscale", "shard", "--input", str(src), "--tokenizer",
                                    str(tok_dir), "--out", str(tmp_path / src.stem), "--seq-len", "512",
                                    "--shard-size-mb", "2", "--workers", "1"]) for src in (many, line)}
    extra = peaks[line.name] - peaks[many.name]
    print(f"peak RSS of gptscale shard: 10 MB as 100 KB documents {peaks[many.name]:.0f} MB, as one line "
          f"{peaks[line.name]:.0f} MB (+{extra:.0f} MB)")
    # before: the one line cost ~36x its size more (the whole text tokenized at once), then ~3x (its bytes and
    # str held); now the file is streamed (see the next test)
    assert extra < 8 * size / 2**20  # measured: +362 MB, then +46 MB, now +30 MB


@pytest.mark.slow
def test_writer_memory_does_not_grow_with_a_long_txt_document(tmp_path, tok_dir, shard_books):
    """A .txt document is read, decoded and hashed in pieces: a 32 MB one-line document costs about what a 1 MB
    one does (holding it would cost ~3x its size: its bytes and a 2-byte-per-character str)."""
    words = " ".join(w for b in shard_books for w in b.read_text(encoding="utf-8-sig").split()) + " \u2019"
    peaks = {}
    for mb in (1, 32):
        src = tmp_path / f"line{mb}.txt"
        with src.open("w", encoding="utf-8") as f:  # one line, written in parts (the test holds no 32 MB str)
            for _ in range(mb * 2**20 // len(words) + 1):
                f.write(words)
        peaks[mb] = peak_rss_mb([sys.executable, "-m", "gptscale", "shard", "--input", str(src), "--tokenizer",
                                 str(tok_dir), "--out", str(tmp_path / src.stem), "--seq-len", "512",
                                 "--shard-size-mb", "1", "--val-fraction", "0.5", "--workers", "1"])
    extra = peaks[32] - peaks[1]
    print(f"peak RSS of gptscale shard on a one-line .txt: 1 MB {peaks[1]:.0f} MB, 32 MB {peaks[32]:.0f} MB "
          f"(+{extra:.0f} MB)")
    assert extra < 40  # measured: +24 MB (+100 MB when the text was held whole)


def test_a_write_that_fails_ends_in_one_line_and_the_rerun_resumes(tmp_path, shard_dir, shard_books, tok_dir):
    out = tmp_path / "out"
    args = ["-m", "gptscale", "shard", "--input", *map(str, shard_books), "--tokenizer", str(tok_dir), "--out",
            str(out), *SHARD_ARGS, "--workers", "1"]

    def small_files_only():  # the kernel refuses writes past 10 KB (EFBIG), as a full disk would (ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))

    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, preexec_fn=small_files_only,
                       check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert re.search(r"(train|val)-00000\.arrow: cannot write it \(OSError: .*File too large\).*rerun", p.stderr)
    assert not [q for q in out.iterdir() if q.name.endswith(".tmp")]  # its temp file is not left behind
    gptscale(*args[2:])
    assert_same_files(out, shard_dir)


def test_rerun_removes_only_gptscales_own_temp_files(tmp_path, shard_dir, shard_books, tok_dir):
    out = tmp_path / "out"
    out.mkdir()
    ours = [".train-00003.arrow.4242.0123abcd.tmp", ".manifest.json.7.deadbeef.tmp", "..journal.npz.99.00ff00ff.tmp",
            ".progress.npz"]  # a killed run's temp files, and the old two-file journal
    theirs = [".notes.txt.12.0123abcd.tmp", ".train-00003.arrow.tmp", "README.tmp"]  # not names gptscale writes
    for name in ours + theirs:
        (out / name).write_bytes(b"left behind")
    write_shards([str(p) for p in shard_books], tok_dir, out, seq_len=32, val_fraction=0.2, seed=7, gutenberg=True,
                 shard_size_mb=0.02, workers=1, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in shard_dir.iterdir()] + theirs)
    for p in shard_dir.iterdir():
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name
