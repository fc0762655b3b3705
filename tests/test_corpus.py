"""Corpus readers and cleaning, on the real Gutenberg books (jsonl / parquet / HF folders built from them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gptscale.data import corpus
from gptscale.data.corpus import (
    BATCH_ROWS,
    CorpusError,
    Document,
    clean_chunks,
    clean_text,
    decode_bytes,
    expand_inputs,
    iter_documents,
    read_source,
    strip_gutenberg,
    txt_chunks,
)

START = re.compile(r"^[ \t]*\*{3}[ \t]*START OF (THE|THIS) PROJECT GUTENBERG", re.IGNORECASE | re.MULTILINE)
END = re.compile(r"^[ \t]*\*{3}[ \t]*END OF (THE|THIS) PROJECT GUTENBERG", re.IGNORECASE | re.MULTILINE)
LICENCE_PHRASES = ("This eBook is for the use of anyone anywhere", "Section 1.  General Terms of Use",
                   "*** START OF", "*** END OF", "Project Gutenberg Literary Archive Foundation")


def raw_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8").removeprefix("\ufeff").replace("\r\n", "\n")


def paragraphs(path: Path, n: int) -> list[str]:
    """The first ``n`` non-blank paragraphs of a book's body (real text for jsonl/parquet/HF tests)."""
    body = strip_gutenberg(raw_text(path))
    return [p for p in body.split("\n\n") if p.strip()][:n]


# ---------------------------------------------------------------------------------------------- .txt


def test_txt_is_one_document_with_lf_only(gutenberg_files):
    crlf = [f for f in gutenberg_files if b"\r\n" in f.read_bytes()]
    assert crlf, "expected CRLF books among the small ones"
    for f in crlf:
        docs = list(read_source(str(f)))
        assert len(docs) == 1 and docs[0] == Document(str(f), 0, docs[0].text)
        assert "\r" not in docs[0].text and not docs[0].text.startswith("\ufeff")
        assert docs[0].text == raw_text(f)  # nothing else changes without gutenberg=True


def test_lone_cr_becomes_lf():
    assert clean_text("a\r\nb\rc\n\rd") == "a\nb\nc\n\nd"


def test_strip_gutenberg_on_every_real_book(all_gutenberg_files):
    """Every book: body starts right after the START line and holds none of the licence text."""
    for f in all_gutenberg_files:
        raw = raw_text(f)
        start = START.search(raw)
        assert start, f.name
        body = next(read_source(str(f), gutenberg=True)).text
        assert body.strip() and len(body) < len(raw), f.name
        assert raw[start.end():].find(body[:200]) < 400, f"{f.name}: body does not follow the START line"
        if END.search(raw):  # the one book without END keeps its trailing small print (documented)
            for phrase in LICENCE_PHRASES:
                assert phrase not in body, (f.name, phrase)
            assert not re.search(r"^End of (the )?Project Gutenberg", body, re.IGNORECASE | re.MULTILINE), f.name


def test_strip_gutenberg_without_end_keeps_to_the_end(all_gutenberg_files):
    no_end = [f for f in all_gutenberg_files if not END.search(raw_text(f))]
    assert len(no_end) == 1, [f.name for f in no_end]
    raw = raw_text(no_end[0])
    body = strip_gutenberg(raw)
    assert "This eBook is for the use" not in body and not START.search(body)
    trailer = raw.rindex("\nEnd of The Project Gutenberg Etext") + 1  # its last lines: cut, like every book's
    assert len(raw) - trailer < 200
    assert raw[:trailer].endswith(body) and len(body) > 0.9 * len(raw)
    assert "THE SMALL PRINT!" in body  # no END marker: the old-style small print stays (kept to the end)


def test_strip_gutenberg_wrapped_title_and_old_forms(all_gutenberg_files):
    jekyll = next(f for f in all_gutenberg_files if f.name == "43-0.txt")
    body = strip_gutenberg(raw_text(jekyll))
    assert body.lstrip().startswith("Produced by") and "HYDE ***" not in body
    assert strip_gutenberg("head\n***START OF THE PROJECT GUTENBERG EBOOK X***\nbody\n***END OF THE PROJECT "
                           "GUTENBERG EBOOK X***\nlicence") == "body\n"
    assert strip_gutenberg("no markers at all\n*** START: FULL LICENSE ***\n") == \
        "no markers at all\n*** START: FULL LICENSE ***\n"


# --------------------------------------------------------------------------------------- bad bytes


def test_non_utf8_byte_names_file_and_offset(tmp_path, gutenberg_files):
    data = gutenberg_files[0].read_bytes()
    offset = len(data) // 2
    bad = tmp_path / "bad book.txt"
    bad.write_bytes(data[:offset] + b"\xff" + data[offset:])
    with pytest.raises(CorpusError, match=rf"bad book\.txt.*byte offset {offset}\b.*--errors replace"):
        list(read_source(str(bad)))
    text = next(read_source(str(bad), errors="replace")).text
    assert text.count("\ufffd") == 1 and text.replace("\ufffd", "") == raw_text(gutenberg_files[0])


def test_non_utf8_in_jsonl_names_line_and_file_offset(tmp_path, gutenberg_files):
    lines = [json.dumps({"text": p}).encode() + b"\n" for p in paragraphs(gutenberg_files[0], 5)]
    bad = lines[3][:10] + b"\xc3\x28" + lines[3][10:]  # invalid continuation byte
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b"".join(lines[:3]) + bad + lines[4])
    offset = sum(map(len, lines[:3])) + 10
    with pytest.raises(CorpusError, match=rf"bad\.jsonl line 4.*byte offset {offset}\b"):
        list(read_source(str(f)))
    assert len(list(read_source(str(f), errors="replace"))) == 5


def test_txt_read_in_pieces_gives_the_same_text_and_errors(tmp_path, gutenberg_files, monkeypatch):
    """The shard writer's streamed .txt (txt_chunks + clean_chunks, a few bytes at a time): the text of
    read_source, whatever the cuts (CRLF, a BOM, multi-byte characters and bad bytes across them)."""
    import random

    rng = random.Random(0)
    book = gutenberg_files[0].read_bytes()[:3000]
    parts = [b"a", b" ", b"\r", b"\n", b"\r\n", "\u00e9".encode(), "\u2019".encode(), "\U0001f600".encode(),
             b"\xff", b"\xe2\x80", b"\xef\xbb\xbf", b"\xed\xa0\x80", b"\xf0\x9f"]
    f = tmp_path / "x.txt"
    for n in range(400):
        data = b"".join(rng.choice(parts) for _ in range(rng.randint(0, 40)))
        data = (b"\xef\xbb\xbf" if n % 3 == 0 else b"") + (book if n % 50 == 0 else b"") + data
        f.write_bytes(data)
        monkeypatch.setattr(corpus, "READ_BYTES", rng.randint(1, 9))
        for errors in ("strict", "replace"):
            want = got = None
            try:
                want = clean_text(decode_bytes(data, str(f), errors=errors))
            except CorpusError as e:
                want = str(e)
            try:
                got = "".join(clean_chunks(txt_chunks(str(f), errors)))
            except CorpusError as e:
                got = str(e)
            assert got == want, (data, errors)


# ---------------------------------------------------------------------------------------- formats


def test_jsonl_reader_and_missing_field(tmp_path, gutenberg_files):
    paras = paragraphs(gutenberg_files[1], 20)
    f = tmp_path / "books.jsonl"
    f.write_text("".join(json.dumps({"text": p.replace("\n", "\r\n"), "id": i}) + "\n" for i, p in enumerate(paras))
                 + "\n", encoding="utf-8")  # CRLF inside the values, a trailing blank line
    docs = list(read_source(str(f)))
    assert [d.text for d in docs] == paras and [d.index for d in docs] == list(range(len(paras)))
    g = tmp_path / "other.json"
    g.write_text(json.dumps({"text": paras[0]}) + "\n" + json.dumps({"body": paras[1], "id": 7}) + "\n")
    with pytest.raises(CorpusError, match=r"other\.json line 2: no field 'text'; available keys: \['body', 'id'\]"):
        list(read_source(str(g)))
    with pytest.raises(CorpusError, match=r"other\.json line 1: no field 'body'.*--text-field"):
        list(read_source(str(g), text_field="body"))
    arr = tmp_path / "array.json"
    arr.write_text(json.dumps([{"text": p} for p in paras[:2]], indent=1))
    with pytest.raises(CorpusError, match=r"array\.json line 1: .*JSON array"):
        list(read_source(str(arr)))


def test_parquet_reader_streams_record_batches(tmp_path, gutenberg_files):
    import pyarrow as pa
    import pyarrow.parquet as pq

    paras = [line for f in gutenberg_files for line in strip_gutenberg(raw_text(f)).splitlines()]
    assert len(paras) > 2 * BATCH_ROWS  # several record batches
    f = tmp_path / "books.parquet"
    pq.write_table(pa.table({"id": list(range(len(paras))), "content": paras}), f, row_group_size=500)
    docs = read_source(str(f), text_field="content")
    assert next(docs).text == paras[0]  # lazily: one batch in, first document out
    assert [d.text for d in docs] == paras[1:]
    with pytest.raises(CorpusError, match=r"books\.parquet: no column 'text'; available columns: \['id', 'content'\]"):
        list(read_source(str(f)))


def test_hf_save_to_disk_folder(tmp_path, gutenberg_files):
    import datasets

    paras = paragraphs(gutenberg_files[2], 50)
    folder = tmp_path / "hf_books"
    datasets.Dataset.from_dict({"text": paras}).save_to_disk(str(folder))
    assert expand_inputs([str(tmp_path)]) == [str(folder)]  # one source, not its arrow files
    assert [d.text for d in iter_documents([str(folder)])] == paras
    splits = tmp_path / "splits" / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": paras[:3]}),
                          "test": datasets.Dataset.from_dict({"text": paras[3:5]})}).save_to_disk(str(splits))
    assert [d.text for d in read_source(str(splits))] == paras[:5]
    with pytest.raises(CorpusError, match="no column 'body'"):
        list(read_source(str(folder), text_field="body"))


def test_hf_spec_streams_with_load_dataset(tmp_path, gutenberg_files):
    import pyarrow as pa
    import pyarrow.parquet as pq

    paras = paragraphs(gutenberg_files[3], 30)
    (tmp_path / "ds" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": paras}), tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    spec = f"hf:{tmp_path / 'ds'}::train"
    assert expand_inputs([spec]) == [spec]
    docs = list(read_source(spec))
    assert [d.text for d in docs] == paras and docs[0].source == spec
    with pytest.raises(CorpusError, match="expected 'hf:NAME"):
        expand_inputs(["hf:"])


def test_empty_documents_are_yielded(tmp_path, gutenberg_files):
    f = tmp_path / "mixed.jsonl"
    para = paragraphs(gutenberg_files[0], 1)[0]
    f.write_text("\n".join(json.dumps({"text": t}) for t in [para, "", " \r\n ", para]) + "\n")
    assert [d.text for d in read_source(str(f))] == [para, "", " \n ", para]


# ------------------------------------------------------------------------------------------- inputs


def test_expand_inputs_dirs_globs_dedup(data_dir, gutenberg_files, tmp_path):
    gut = data_dir / "corpus" / "gutenberg"
    every = expand_inputs([str(gut)])
    assert len(every) == len(list(gut.glob("*.txt"))) and every == sorted(every)
    picked = expand_inputs([str(gutenberg_files[1]), str(gut / "pg*.txt"), str(gutenberg_files[1])])
    assert len(picked) == len(set(picked)) and str(gutenberg_files[1]) in picked
    assert all(Path(p).name.startswith("pg") or p == str(gutenberg_files[1]) for p in picked)
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "x.jsonl").write_text("")
    (nested / "notes.md").write_text("not a source")
    assert expand_inputs([str(tmp_path / "a")]) == [str(nested / "x.jsonl")]
    assert expand_inputs([str(tmp_path / "**" / "*.jsonl")]) == [str(nested / "x.jsonl")]


def test_expand_inputs_errors_name_the_input(data_dir, tmp_path):
    pattern = str(data_dir / "corpus" / "gutenberg" / "*.nope")
    with pytest.raises(CorpusError, match=re.escape(pattern) + ".*matched no"):
        expand_inputs([pattern])
    with pytest.raises(CorpusError, match="missing.txt.*no such file"):
        expand_inputs([str(tmp_path / "missing.txt")])
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(CorpusError, match="unsupported file type '.md'"):
        expand_inputs([str(tmp_path / "notes.md")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="empty'.*holds no"):
        expand_inputs([str(tmp_path / "empty")])
    with pytest.raises(CorpusError, match="errors='ignore'"):
        list(read_source(str(data_dir / "corpus" / "tinyshakespeare" / "input.txt"), errors="ignore"))


def test_iter_documents_in_source_order(gutenberg_files, shakespeare):
    docs = list(iter_documents([str(shakespeare), *map(str, gutenberg_files)], gutenberg=True))
    assert [d.source for d in docs] == sorted([str(shakespeare), *map(str, gutenberg_files)])
    shake = next(d for d in docs if d.source == str(shakespeare))
    assert shake.text.startswith("First Citizen:")  # no START marker: unchanged
