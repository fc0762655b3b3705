"""The shared file readers (CSV, TSV, JSON lines: one parser each; parquet, arrow and ``datasets`` folders through
gptscale/tasks/datasets_io.py) and the parsers of the local task files (GLUE TSV, JSON samples, RACE, Story Cloze,
IMDB). The custom task: gptscale/tasks/custom.py."""

from __future__ import annotations

import bisect
import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptscale.tasks.base import Example, Parser, Task, TaskDataError

# ------------------------------------------------------------------------------------- file readers
# The one place that reads CSV / TSV / JSON-lines files for the tasks and for `gptscale predict --file`: one
# parser per format (``csv`` unquoted for TSV, ``csv`` with quoting for CSV, ``json`` per line for JSON lines),
# every error naming the file and line.

UTF8_BOM = b"\xef\xbb\xbf"
BINARY_MAGIC = {b"PAR1": "a parquet file", b"ARROW1\x00": "an Arrow IPC file",
                b"\xff\xff\xff\xff": "an Arrow stream (a datasets .arrow file)"}
"""Leading bytes of the table formats that are never decoded as text (datasets_io reads them); a parquet file
also ends with its magic."""
DATASET_SUFFIXES = (".parquet", ".arrow")
"""File suffixes read_table hands to gptscale/tasks/datasets_io.py (as are save_to_disk folders)."""


def read_text(path: Path) -> str:
    """The text of a UTF-8 file, a leading BOM dropped; a file that is not UTF-8 is a TaskDataError naming
    the line and byte offset of the first bad byte and how to re-encode it, and a parquet / Arrow file (by its
    leading bytes, whatever its name) one saying so."""
    data = Path(path).read_bytes()
    kind = next((k for magic, k in BINARY_MAGIC.items()
                 if data.startswith(magic) and (magic != b"PAR1" or data.endswith(magic))), None)
    if kind:
        raise TaskDataError(f"{path}: {kind}, not text; name it .parquet / .arrow so that it is read as a table "
                            f"(custom task), or pass the CSV / TSV / JSON-lines file the task expects")
    skip = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        off = skip + e.start
        line = data[:off].count(b"\n") + 1
        col = off - (data.rfind(b"\n", 0, off) + 1)
        raise TaskDataError(
            f"{path}:{line}: not UTF-8: byte 0x{data[off]:02x} at byte offset {off} (line {line}, byte {col + 1} "
            f"of the line) is invalid UTF-8 ({e.reason}); re-encode the file as UTF-8, e.g. iconv -f WINDOWS-1252 "
            f"-t UTF-8 {path.name} > utf8_{path.name} (name its real encoding after -f), and pass that file") from None


def read_rows(path: Path, delimiter: str = "\t") -> list[tuple[int, list[str]]]:
    """(first line number, fields) of each non-blank row of a CSV or TSV (``read_text``: UTF-8, a leading BOM
    dropped); tab-separated text is read unquoted (GLUE text contains bare quotes), comma-separated with CSV
    quoting. Rows may have any number of fields: ``read_dicts`` checks them against a header."""
    csv.field_size_limit(sys.maxsize)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter, quoting=quoting)
    out, prev = [], 0
    try:
        for row in reader:
            if row not in ([], [""]):
                out.append((prev + 1, row))  # the line the row starts on (a quoted CSV field may span lines)
            prev = reader.line_num
    except csv.Error as e:
        raise TaskDataError(f"{path}:{reader.line_num}: not valid {'TSV' if delimiter == chr(9) else 'CSV'} "
                            f"({e}); quote fields holding commas, quotes or line breaks (CSV), or use JSON lines"
                            ) from None
    return out


def _field_hint(delimiter: str) -> str:
    if delimiter == "\t":
        return ("a tab inside a text splits it into two fields (TSV has no quoting): remove tabs from the texts, "
                "or write the file as CSV (quoted fields) or JSON lines")
    return "a comma inside a text must be inside double quotes (\"like, this\"), or write the file as JSON lines"


def read_dicts(path: Path, delimiter: str = ",") -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line number, {column: value})]) of a CSV / TSV whose first row names the columns (see
    ``read_rows``). A row with more or fewer fields than the header is a TaskDataError naming its line: an
    unquoted comma or a tab inside a text never becomes a silent extra field (or a new label)."""
    rows = read_rows(path, delimiter)
    if not rows:
        return [], []
    head = rows[0][1]
    out = []
    for n, row in rows[1:]:
        if len(row) != len(head):
            raise TaskDataError(f"{path}:{n}: {len(row)} fields, but the header (line {rows[0][0]}) names "
                                f"{len(head)} ({head}); {_field_hint(delimiter)}")
        out.append((n, dict(zip(head, row))))
    return head, out


def json_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSON-lines file (``read_text``: UTF-8, a leading BOM
    dropped)."""
    out = []
    for n, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskDataError(f"{path}:{n}: not a JSON line ({e}); expected one JSON object per line") from None
        if not isinstance(rec, dict):
            raise TaskDataError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}; a JSON-lines file "
                                f"holds one object per line")
        out.append((n, rec))
    return out


@dataclass
class Table:
    """The rows of one split, whatever its format: what the custom task checks and turns into Examples."""

    where: str
    """The file or folder read (the first one, when a split has several shards)."""
    head: list[str] | None
    """Column names; None for JSON lines (each line has its own keys)."""
    rows: list[tuple[int, dict[str, Any]]]
    """(line number, record) of a text file; (row index over all shards, record) of a datasets table."""
    classes: dict[str, list[str]] = field(default_factory=dict)
    """A ``datasets.ClassLabel`` column -> its names in id order (its records hold the names, None for -1)."""
    shards: list[tuple[int, str]] = field(default_factory=list)
    """(first row, file or folder) of each shard of a datasets table; empty for a text file."""

    def at(self, n: int) -> str:
        """Where row ``n`` is, for errors: ``file:line`` of a text file, ``shard row i`` of a datasets table."""
        if not self.shards:
            return f"{self.where}:{n}"
        start, name = self.shards[bisect.bisect_right([s for s, _ in self.shards], n) - 1]
        return f"{name} row {n - start}"

    @property
    def columns_are(self) -> str:
        """How errors introduce ``head``."""
        return "its columns are" if self.shards else "its header has"


def read_table(paths: Sequence[Path]) -> Table:
    """The rows of one split's file(s) by suffix, one parser each: ``.parquet`` / ``.arrow`` files and
    ``datasets`` save_to_disk folders (or their ``state.json``): gptscale/tasks/datasets_io.py (several
    paths are shards, read in order); ``.jsonl`` / ``.json``: JSON lines (header None: each line has its own
    keys); ``.tsv``: tab-separated; anything else: CSV. Both of those need a header row, and every row its
    fields (``read_dicts``)."""
    path = paths[0]
    suffix = path.suffix.lower()
    if suffix in DATASET_SUFFIXES or path.name == "state.json" or path.is_dir():
        from gptscale.tasks import datasets_io  # here, not on top: only these tables need the datasets library

        return datasets_io.read_dataset_table(list(paths))
    if len(paths) > 1:
        raise TaskDataError(f"{path}: {len(paths)} files ({[p.name for p in paths]}) for one split; only parquet "
                            f"/ arrow shards may be several: pass one CSV / TSV / JSON-lines file per split")
    if suffix in (".jsonl", ".json"):
        return Table(str(path), None, json_lines(path))
    return Table(str(path), *read_dicts(path, "\t" if suffix == ".tsv" else ","))


# ---------------------------------------------------------------------------------------- task parsers


def _tsv(a: str | int, b: str | int | None = None, label: str | int | None = None,
         index: str | int | None = None, *, header: bool = True, skip_labels: tuple[str, ...] = ()) -> Parser:
    """Parser of a tab-separated file: columns by header name (str) or position (int, may be negative)."""

    def parse(task: Task, paths: list[Path]) -> list[Example]:
        path = paths[0]
        rows = read_rows(path)
        head = rows[0][1] if header and rows else []
        body = rows[1:] if header else rows
        layout = (f"{'header' if header else 'no header'}, columns "
                  f"{[c for c in (index, a, b, label) if c is not None]}")

        def pos(c: str | int | None) -> int | None:
            if c is None or isinstance(c, int):
                return c
            if c not in head:
                raise TaskDataError(f"{path}: no column {c!r} in the header {head}; expected a TSV with {layout} "
                                    f"(task {task.name}); pass --data-dir with the original files")
            return head.index(c)

        ia, ib, il, ii = pos(a), pos(b), pos(label), pos(index)
        need = max(abs(i) + (0 if i < 0 else 1) for i in (ia, ib, il, ii) if i is not None)
        out: list[Example] = []
        for n, row in body:
            if len(row) < need:
                raise TaskDataError(f"{path}:{n}: {len(row)} columns, need {need}; expected a TSV with {layout} "
                                    f"(task {task.name})")
            if il is not None and row[il].strip() in skip_labels:
                continue
            meta: dict[str, Any] = {}
            if ii is not None:
                meta["index"] = int(row[ii]) if row[ii].isdigit() else row[ii]
            lab = task.label_of(row[il], f"{path}:{n}") if il is not None else None
            out.append(Example(row[ia], row[ib] if ib is not None else None, None, lab, meta))
        return out

    return parse


def _json_sample(task: Task, paths: list[Path]) -> list[Example]:
    """The shared samples: ``{"0": {"text_a": ..., "text_b": ..., "label": ...}, ...}``."""
    path = paths[0]
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}: not a JSON object ({e})") from None
    if not isinstance(data, dict):
        raise TaskDataError(f"{path}: expected {{\"0\": {{\"text_a\", \"text_b\", \"label\"}}, ...}}")
    out = []
    for key, rec in data.items():
        if not isinstance(rec, dict) or not {"text_a", "label"} <= set(rec):
            raise TaskDataError(f"{path}: record {key!r} lacks text_a/label; expected "
                                f"{{\"i\": {{\"text_a\", \"text_b\", \"label\"}}}}")
        if str(rec["label"]).strip() == "-":
            continue
        out.append(Example(rec["text_a"], rec.get("text_b"), None, task.label_of(str(rec["label"]), f"{path}[{key}]"),
                           {"index": int(key) if str(key).isdigit() else key}))
    return out


RACE_LEVELS = ("middle", "high")
"""RACE's two school levels: its files are ``{split}-{level}.jsonl``, its examples carry ``meta["level"]``."""


def _race(task: Task, paths: list[Path]) -> list[Example]:
    """RACE JSON lines (one passage per line): one Example per question, meta level/id/question index."""
    out = []
    for path in paths:
        level = next((lv for lv in RACE_LEVELS if lv in path.name), "")
        for n, d in json_lines(path):
            try:
                qs, opts, ans, art = d["questions"], d["options"], d.get("answers"), d["article"]
                pairs = list(zip(qs, opts))
            except (KeyError, TypeError) as e:
                raise TaskDataError(f"{path}:{n}: expected a JSON object with article, questions, options, "
                                    f"answers, id ({type(e).__name__}: {e})") from None
            for q, (question, options) in enumerate(pairs):
                if len(options) != 4:
                    raise TaskDataError(f"{path}:{n}: question {q} has {len(options)} options, RACE has 4")
                lab = None
                if ans is not None:
                    if ans[q] not in "ABCD" or len(ans[q]) != 1:
                        raise TaskDataError(f"{path}:{n}: answer {ans[q]!r} is not one of A, B, C, D")
                    lab = "ABCD".index(ans[q])
                meta = {"id": d.get("id"), "level": level, "question": q}
                out.append(Example(art, question, list(options), lab, meta))
    return out


STORY_COLS = ["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
              "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"]


def _story_cloze(task: Task, paths: list[Path]) -> list[Example]:
    path = paths[0]
    head, recs = read_dicts(path)
    missing = [c for c in STORY_COLS[:-1] if c not in head]
    if missing:
        raise TaskDataError(f"{path}: missing column(s) {missing}; expected a CSV with header {STORY_COLS} "
                            f"(Story Cloze 2016); pass --data-dir with the original val/test CSVs")
    out = []
    for n, r in recs:
        ctx = " ".join(r[f"InputSentence{i}"].strip() for i in range(1, 5))
        raw = r.get("AnswerRightEnding", "").strip()
        if raw and raw not in ("1", "2"):
            raise TaskDataError(f"{path}:{n}: AnswerRightEnding {raw!r} is not 1 or 2")
        out.append(Example(ctx, None, [r["RandomFifthSentenceQuiz1"], r["RandomFifthSentenceQuiz2"]],
                           int(raw) - 1 if raw else None, {"id": r["InputStoryid"]}))
    return out


def _imdb_table(task: Task, paths: list[Path]) -> list[Example]:
    """HF ``stanfordnlp/imdb`` parquet shards or a CSV with ``text`` and ``label`` columns."""
    out = []
    for path in paths:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq  # here, not on top: only IMDB's parquet files need pyarrow

            names = pq.read_schema(path).names
            if not {"text", "label"} <= set(names):
                raise TaskDataError(f"{path}: columns {names}; expected text, label (stanfordnlp/imdb parquet)")
            t = pq.read_table(path, columns=["text", "label"]).to_pydict()
            texts, labels = t["text"], t["label"]
        else:
            head, recs = read_dicts(path)
            if not {"text", "label"} <= set(head):
                raise TaskDataError(f"{path}: header {head}; expected a CSV with text,label")
            texts, labels = [r["text"] for _, r in recs], [r["label"] for _, r in recs]
        for i, (x, y) in enumerate(zip(texts, labels)):
            out.append(Example(x, None, None, task.label_of(str(y), f"{path}[{i}]"), {}))
    return out


def _imdb_acl(task: Task, paths: list[Path]) -> list[Example]:
    """The original ``aclImdb/{train,test}/{neg,pos}/<id>_<rating>.txt`` layout (neg first, as HF)."""
    split_dir = paths[0].parent
    out = []
    for label, sub in enumerate(("neg", "pos")):
        for f in sorted((split_dir / sub).glob("*.txt"), key=lambda p: (len(p.stem), p.stem)):
            rating = f.stem.rsplit("_", 1)[-1]
            out.append(Example(read_text(f), None, None, label,
                               {"file": f.name, "rating": int(rating) if rating.isdigit() else None}))
    return out
