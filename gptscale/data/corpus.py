"""Corpus readers and cleaning: raw files (or Hugging Face datasets) in, one ``Document`` per text out.

    for doc in iter_documents(["data/gutenberg/", "extra/*.jsonl", "hf:wikitext:wikitext-2-raw-v1:train"],
                              gutenberg=True):
        ...                                   # doc.source, doc.index, doc.text (LF line endings)

Sources: ``.txt`` (the whole file is one document), ``.jsonl`` / ``.json`` (JSON lines, one document per
line, the ``text_field`` of each object), ``.parquet`` (column ``text_field``, read in record batches), a
local Hugging Face datasets folder written by ``save_to_disk``, and ``hf:NAME[:CONFIG][:SPLIT]`` specs read
with ``datasets.load_dataset(streaming=True)``. Everything streams: no reader holds more than one
document (``.txt``) or one record batch (``.parquet``, HF) at a time.

Cleaning is deliberately minimal and lossless for the text itself: a leading UTF-8 BOM is dropped,
CRLF and lone CR become LF, and with ``gutenberg=True`` Project Gutenberg's licence header and footer
are cut (``strip_gutenberg``). Empty documents are still yielded; the shard writer counts and skips them.
Every problem is a ``CorpusError`` naming the file (and line or byte offset) and the fix.
"""

from __future__ import annotations

import codecs
import glob
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptscale.errors import GptscaleError

HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
"""Files that make a folder a ``datasets.save_to_disk`` folder (read as one source)."""
HF_PREFIX = "hf:"
ERRORS = ("strict", "replace")
BATCH_ROWS = 1024
"""Rows per record batch for parquet and HF datasets."""
READ_BYTES = 1 << 20
"""Bytes read at a time by ``txt_chunks``."""


class CorpusError(GptscaleError, ValueError):
    """An input that cannot be read as a corpus; the message names the file, the place and the fix."""


@dataclass(frozen=True)
class Document:
    """One text of the corpus."""

    source: str
    """File path (or ``hf:`` dataset spec) it came from."""
    index: int
    """Position of the document within that source (0-based)."""
    text: str
    """Cleaned text: LF line endings, no BOM, Gutenberg boilerplate cut when asked."""


# -------------------------------------------------------------------------------------------- inputs


def is_hf_folder(path: str | Path) -> bool:
    """True for a folder written by ``datasets`` ``save_to_disk`` (Dataset or DatasetDict)."""
    p = Path(path)
    return p.is_dir() and any((p / m).is_file() for m in HF_MARKERS)


def _is_source_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in READERS and not path.name.startswith(".")


def _walk_dir(root: Path) -> Iterator[Path]:
    """Source files and HF dataset folders under ``root``, recursively; hidden entries are skipped."""
    if is_hf_folder(root):
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            if is_hf_folder(here / d):
                yield here / d
            else:
                keep.append(d)
        dirnames[:] = keep
        yield from (here / f for f in filenames if _is_source_file(here / f))


def _expand_one(item: str) -> list[str]:
    """One ``--input`` entry -> the source strings it stands for (unsorted)."""
    if item.startswith(HF_PREFIX):
        parse_hf_spec(item)  # validates
        return [item]
    has_magic = glob.has_magic(item)
    paths = [Path(p) for p in glob.glob(os.path.expanduser(item), recursive=True)] if has_magic else [Path(item)]
    if not has_magic and not paths[0].exists():
        raise CorpusError(f"input {item!r}: no such file or directory; check the path (globs like 'dir/*.txt' "
                          f"and directories are accepted too)")
    found: list[str] = []
    for p in paths:
        if p.is_dir():
            found += [str(s) for s in _walk_dir(p)]
        elif _is_source_file(p):
            found.append(str(p))
        elif not has_magic:
            raise CorpusError(f"input {item!r}: unsupported file type {p.suffix or '(none)'!r}; "
                              f"supported: {', '.join(READERS)}, a datasets save_to_disk folder, or 'hf:NAME'")
    if not found:
        what = "pattern matched no" if has_magic else "directory holds no"
        raise CorpusError(f"input {item!r}: {what} {'/'.join(READERS)} files or datasets folders; "
                          f"fix the path or pattern")
    return found


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files, globs and directories -> sorted, de-duplicated list of sources.

    Directories are searched recursively for ``.txt .jsonl .json .parquet`` files; a local HF datasets
    folder (``save_to_disk``: has ``dataset_info.json`` / ``state.json``) is kept as one source; a string
    ``hf:NAME[:CONFIG][:SPLIT]`` is a ``datasets.load_dataset`` spec. A pattern matching nothing, a
    missing path or an unsupported file is a ``CorpusError`` naming it.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [str(inputs)]
    if not inputs:
        raise CorpusError("no inputs given; pass files, globs, directories or 'hf:NAME' specs")
    seen: dict[str, str] = {}
    for item in inputs:
        for source in _expand_one(str(item)):
            key = source if source.startswith(HF_PREFIX) else os.path.realpath(source)
            seen.setdefault(key, source)
    return sorted(seen.values())


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """``'hf:NAME[:CONFIG][:SPLIT]'`` -> (name, config or None, split; default 'train')."""
    parts = spec[len(HF_PREFIX):].split(":")
    if not parts[0] or len(parts) > 3:
        raise CorpusError(f"input {spec!r}: expected 'hf:NAME[:CONFIG][:SPLIT]', e.g. "
                          f"'hf:wikitext:wikitext-103-raw-v1:train'")
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return parts[0], config, split


# ------------------------------------------------------------------------------------------ cleaning

_START = re.compile(r"^[ \t]*\*{3}[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG\b", re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^[ \t]*\*{3}[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG\b", re.IGNORECASE | re.MULTILINE)
_TRAILER = re.compile(r"^[ \t]*End of (?:the )?Project Gutenberg", re.IGNORECASE | re.MULTILINE)
_MARKER_SPAN = 400
"""Longest marker we accept: a title may wrap over a few lines before the closing '***'; also the longest
'End of the Project Gutenberg EBook of TITLE, by AUTHOR' trailer we cut from the end of the body."""


def strip_gutenberg(text: str) -> str:
    """Keep only the text between the ``*** START OF ... ***`` line and the ``*** END OF ... ***`` line.

    Case-insensitive; matches both 'THIS PROJECT GUTENBERG EBOOK' and the older 'THE PROJECT GUTENBERG
    EBOOK/ETEXT' forms, with or without a space after the asterisks, and titles wrapped over several
    lines (the marker runs to the line holding its closing ``***``). Missing END -> keep to the end;
    missing START -> ``text`` unchanged. ``*** START: FULL LICENSE ***`` is not a start marker.
    The body's closing 'End of (the) Project Gutenberg('s) EBook of ...' line(s), which most books carry
    just above the END marker, is cut too. Expects LF line endings (``clean_text`` runs first).
    """
    start = _START.search(text)
    if start is None:
        return text
    close = text.find("***", start.end(), start.end() + _MARKER_SPAN)
    body_from = close + 3 if close >= 0 else start.end()
    line_end = text.find("\n", body_from)
    body_from = len(text) if line_end < 0 else line_end + 1
    end = _END.search(text, body_from)
    body = text[body_from:end.start() if end else len(text)]
    tail = max(0, len(body) - _MARKER_SPAN)
    trailers = list(_TRAILER.finditer(body, tail))
    return body[:trailers[-1].start()] if trailers else body


def clean_text(text: str, *, gutenberg: bool = False) -> str:
    """Drop a leading BOM, turn CRLF and lone CR into LF, then cut Gutenberg boilerplate if asked."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return strip_gutenberg(text) if gutenberg else text


def decode_bytes(data: bytes, source: str, *, errors: str, base_offset: int = 0, where: str = "") -> str:
    """UTF-8 decode; with ``errors='strict'`` a bad byte is a CorpusError naming file and byte offset."""
    try:
        return data.decode("utf-8", errors="strict" if errors == "strict" else "replace")
    except UnicodeDecodeError as e:
        raise _utf8_error(source, where, base_offset + e.start, data[e.start]) from None


def _utf8_error(source: str, where: str, offset: int, byte: int) -> CorpusError:
    return CorpusError(f"{source}{where}: invalid UTF-8 at byte offset {offset} (byte 0x{byte:02x}); "
                       f"fix the file's encoding, or pass --errors replace (errors='replace') to decode bad "
                       f"bytes as U+FFFD")


def txt_chunks(path: str, errors: str) -> Iterator[str]:
    """``decode_bytes`` of a whole file, read and decoded READ_BYTES at a time: the same text (in pieces) and
    the same errors, without holding the file (the shard writer's ``.txt`` documents)."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="strict" if errors == "strict" else "replace")
    offset = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(READ_BYTES)
            held = len(dec.getstate()[0])  # bytes of an unfinished character kept from the last read
            try:
                text = dec.decode(data, final=not data)
            except UnicodeDecodeError as e:
                raise _utf8_error(path, "", offset - held + e.start, e.object[e.start]) from None
            offset += len(data)
            if text:
                yield text
            if not data:
                return


def clean_chunks(chunks: Iterable[str]) -> Iterator[str]:
    """``clean_text`` (without Gutenberg cutting) of the text the chunks make up, chunk by chunk."""
    first, carry = True, ""
    for chunk in chunks:
        chunk = carry + chunk
        if not chunk:
            continue
        if first:
            chunk, first = chunk.removeprefix("\ufeff"), False
        carry = "\r" if chunk.endswith("\r") else ""  # may be the CR of a CRLF cut by the chunking
        chunk = chunk[:-1] if carry else chunk
        chunk = chunk.replace("\r\n", "\n").replace("\r", "\n")
        if chunk:
            yield chunk
    if carry:
        yield "\n"


# ------------------------------------------------------------------------------------------- readers


def _read_txt(path: str, text_field: str, errors: str) -> Iterator[str]:
    yield decode_bytes(Path(path).read_bytes(), path, errors=errors)


def _json_record(raw: bytes, path: str, lineno: int, offset: int, errors: str) -> Any:
    line = decode_bytes(raw, path, errors=errors, base_offset=offset, where=f" line {lineno}")
    if lineno == 1:
        line = line.removeprefix("\ufeff")
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        hint = (" (the file looks like one JSON array; write one JSON object per line instead)"
                if lineno == 1 and line.lstrip().startswith("[") else "")
        raise CorpusError(f"{path} line {lineno}: not valid JSON ({e.msg} at column {e.colno}){hint}; "
                          f"expected JSON lines: one object per line") from None


def _field(record: Any, text_field: str, where: str) -> str:
    """``record[text_field]`` as a string, or a CorpusError naming ``where`` and the keys present."""
    if not isinstance(record, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if text_field not in record:
        raise CorpusError(f"{where}: no field {text_field!r}; available keys: {sorted(record)}; "
                          f"pass --text-field KEY (text_field=...) to pick one")
    value = record[text_field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CorpusError(f"{where}: field {text_field!r} is {type(value).__name__}, not a string")
    return value


def _read_jsonl(path: str, text_field: str, errors: str) -> Iterator[str]:
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                record = _json_record(raw, path, lineno, offset, errors)
                yield _field(record, text_field, f"{path} line {lineno}")
            offset += len(raw)


def _column_values(column: Any, path: str, first_row: int, errors: str) -> Iterator[str]:
    """Python strings of one arrow column chunk; binary columns are decoded as UTF-8."""
    for i, value in enumerate(column.to_pylist()):
        if value is None:
            yield ""
        elif isinstance(value, bytes):
            yield decode_bytes(value, path, errors=errors, where=f" row {first_row + i}")
        elif isinstance(value, str):
            yield value
        else:
            raise CorpusError(f"{path} row {first_row + i}: text column holds {type(value).__name__}, not text")


def _read_parquet(path: str, text_field: str, errors: str) -> Iterator[str]:
    import pyarrow.parquet as pq  # lazy: tokenizer workers reading .txt need not load parquet

    with pq.ParquetFile(path) as pf:
        names = pf.schema_arrow.names
        if text_field not in names:
            raise CorpusError(f"{path}: no column {text_field!r}; available columns: {names}; "
                              f"pass --text-field COLUMN (text_field=...) to pick one")
        row = 0
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[text_field]):
            yield from _column_values(batch.column(0), path, row, errors)
            row += batch.num_rows


def _iter_hf_dataset(ds: Any, name: str, text_field: str, errors: str) -> Iterator[str]:
    """Text column of an in-memory/on-disk ``datasets.Dataset``, in record batches."""
    if text_field not in ds.column_names:
        raise CorpusError(f"{name}: no column {text_field!r}; available columns: {ds.column_names}; "
                          f"pass --text-field COLUMN (text_field=...) to pick one")
    row = 0
    for batch in ds.with_format("arrow").select_columns([text_field]).iter(batch_size=BATCH_ROWS):
        yield from _column_values(batch.column(0), name, row, errors)
        row += batch.num_rows


def _read_hf_folder(path: str, text_field: str, errors: str) -> Iterator[str]:
    import datasets  # lazy: ~2 s to import, only for datasets folders and hf: specs

    loaded = datasets.load_from_disk(path)
    if isinstance(loaded, datasets.DatasetDict):  # every split, in the order save_to_disk wrote them
        for split, ds in loaded.items():
            yield from _iter_hf_dataset(ds, f"{path} (split {split})", text_field, errors)
    else:
        yield from _iter_hf_dataset(loaded, path, text_field, errors)


def _read_hf_spec(spec: str, text_field: str, errors: str) -> Iterator[str]:
    import datasets  # lazy, as above

    name, config, split = parse_hf_spec(spec)
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # datasets raises many types (hub, config, split errors)
        raise CorpusError(f"{spec}: datasets.load_dataset({name!r}, {config!r}, split={split!r}) failed: "
                          f"{type(e).__name__}: {e}") from e
    for row, record in enumerate(ds):  # already decoded by datasets; `errors` has nothing left to do
        yield _field(record, text_field, f"{spec} row {row}")


def read_source(source: str, *, text_field: str = "text", gutenberg: bool = False,
                errors: str = "strict") -> Iterator[Document]:
    """Documents of one source (a path from ``expand_inputs`` or an ``hf:`` spec), cleaned.

    ``.txt``: the whole file is one document; ``.jsonl``/``.json`` (JSON lines): ``text_field`` of each
    line; ``.parquet``: column ``text_field`` in record batches; HF folder: ``datasets.load_from_disk``;
    ``hf:`` spec: ``datasets.load_dataset(streaming=True)``. Every text goes through ``clean_text``.
    Non-UTF-8 bytes with ``errors='strict'`` -> CorpusError naming the file and byte offset;
    ``errors='replace'`` decodes them as U+FFFD. Empty documents are yielded too.
    """
    if errors not in ERRORS:
        raise CorpusError(f"errors={errors!r}: choose one of {', '.join(ERRORS)}")
    for index, text in enumerate(_raw_texts(str(source), text_field, errors)):
        yield Document(source=str(source), index=index, text=clean_text(text, gutenberg=gutenberg))


READERS: dict[str, Callable[[str, str, str], Iterator[str]]] = {
    ".txt": _read_txt, ".jsonl": _read_jsonl, ".json": _read_jsonl, ".parquet": _read_parquet}
"""File suffix -> reader(path, text_field, errors) of its texts. A new corpus format is one reader and one
entry here (expand_inputs picks up every suffix listed)."""


def _raw_texts(source: str, text_field: str, errors: str) -> Iterable[str]:
    """Dispatch on the kind of source."""
    if source.startswith(HF_PREFIX):
        return _read_hf_spec(source, text_field, errors)
    path = Path(source)
    if is_hf_folder(path):
        return _read_hf_folder(source, text_field, errors)
    if not path.is_file():
        raise CorpusError(f"{source}: no such file (or not a datasets save_to_disk folder)")
    reader = READERS.get(path.suffix.lower())
    if reader is not None:
        return reader(source, text_field, errors)
    raise CorpusError(f"{source}: unsupported file type {path.suffix or '(none)'!r}; supported: {', '.join(READERS)}")


def iter_documents(inputs: list[str], **kw: Any) -> Iterator[Document]:
    """``expand_inputs`` then ``read_source(source, **kw)`` for each source, in order."""
    for source in expand_inputs(inputs):
        yield from read_source(source, **kw)
