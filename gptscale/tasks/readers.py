"""Parsers of the local task files (GLUE TSV, JSON samples, RACE, Story Cloze, IMDB) and the custom task."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gptscale.tasks.base import _S, INFER, KINDS, Example, Parser, Task, TaskDataError

# ------------------------------------------------------------------------------------- file readers
# The one place that reads CSV / TSV / JSON-lines files for the tasks and for `gptscale predict --file`.


def read_rows(path: Path, delimiter: str = "\t") -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank row of a CSV or TSV: UTF-8 with a leading BOM dropped;
    tab-separated text is read unquoted (GLUE text contains bare quotes), comma-separated with CSV quoting."""
    csv.field_size_limit(sys.maxsize)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
            return [(reader.line_num, row) for row in reader if row not in ([], [""])]
    except UnicodeDecodeError as e:
        raise TaskDataError(f"{path}: not UTF-8 ({e})") from None


def read_dicts(path: Path, delimiter: str = ",") -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line number, {column: value})]) of a CSV / TSV whose first row names the columns (see
    ``read_rows``); a short row's missing columns read as ""."""
    rows = read_rows(path, delimiter)
    if not rows:
        return [], []
    head = rows[0][1]
    return head, [(n, {c: row[i] if i < len(row) else "" for i, c in enumerate(head)}) for n, row in rows[1:]]


def json_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSON-lines file (UTF-8, a leading BOM dropped)."""
    out = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TaskDataError(f"{path}:{n}: not a JSON line ({e})") from None
                if not isinstance(rec, dict):
                    raise TaskDataError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
                out.append((n, rec))
    except UnicodeDecodeError as e:
        raise TaskDataError(f"{path}: not UTF-8 ({e})") from None
    return out


def read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of a JSON-lines file (``.jsonl`` / ``.json``) or a CSV / TSV (``.tsv``) with a header."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return json_lines(path)
    return read_dicts(path, "\t" if suffix == ".tsv" else ",")[1]


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
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
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
            out.append(Example(f.read_text(encoding="utf-8"), None, None, label,
                               {"file": f.name, "rating": int(rating) if rating.isdigit() else None}))
    return out


# ---------------------------------------------------------------------------------------- custom task


def _infer_labels(values: list[Any]) -> tuple[str, list[str]]:
    """(kind, label_names) from raw label values: all ints -> classes 0..max, numbers -> regression,
    anything else -> classes named by the sorted distinct strings."""
    vals = [v for v in values if v not in (None, "")]
    try:
        nums = [float(v) for v in vals]
    except (TypeError, ValueError):
        return "classification", sorted({str(v).strip() for v in vals})
    if nums and all(x.is_integer() and x >= 0 for x in nums):
        return "classification", [str(i) for i in range(int(max(nums)) + 1)]
    return "regression", []


def _metrics_for(kind: str) -> list[str]:
    return ["pearson", "spearman"] if kind == "regression" else ["accuracy"]


def _labels_reader(label_col: str, pair: bool) -> Callable[[Task, Path], Task]:
    """``Task.labels_from_files`` of a custom task: kind, labels and metrics from the ``label_col`` values of
    the train file under the data folder (else of the first split found there)."""

    def labelled(task: Task, data_dir: Path) -> Task:
        found = task.available_splits(data_dir)
        if not found:
            return task  # no file at all: loading a split reports it
        values = [r.get(label_col) for _, r in read_records(task.resolve(data_dir, found[0])[0][0])]
        k, names = _infer_labels(values)
        if task.label_names:
            k, names = "classification", task.label_names
        kind = task.kind if task.kind != INFER else "entailment" if pair and k == "classification" else k
        return dataclasses.replace(task, kind=kind, label_names=names, num_labels=max(len(names), 1),
                                   metrics=_metrics_for(k))

    return labelled


def custom_task(text_col: str = "text", text_pair_col: str | None = None, label_col: str = "label",
                kind: str | None = None, label_names: Sequence[str] | None = None, name: str = "custom") -> Task:
    """A task from your own CSV / TSV / JSONL files: ``{split}.csv|tsv|jsonl`` in data_dir (or data_dir is
    the file itself, used for any split: see registry.task_for). ``kind`` (classification / regression, or
    entailment for pairs) is inferred from the labels of the train file when not given: integers -> classes
    0..max, other numbers -> regression, strings -> classes in sorted order (give ``label_names`` to fix the
    order). The Task returned leaves them to ``Task.with_labels(data_dir)`` (task_for and ``Task.load`` call
    it), which returns a new Task: this one never changes."""
    if kind is not None and kind not in KINDS:
        raise TaskDataError(f"custom task: kind {kind!r} is not one of {KINDS}")
    cols = [text_col] + ([text_pair_col] if text_pair_col else [])
    lay = f"CSV/TSV with a header, or JSON lines, with columns {cols + [label_col]} (label optional on test)"

    def parse(task: Task, paths: list[Path]) -> list[Example]:
        path = paths[0]
        recs = read_records(path)
        if recs:
            missing = [c for c in cols if c not in recs[0][1]]
            if missing:
                raise TaskDataError(f"{path}: no column(s) {missing} (has {sorted(recs[0][1])}); expected {lay}; "
                                    f"set --text-col / --text-pair-col / --label-col")
        out = []
        for i, (n, r) in enumerate(recs):
            raw = r.get(label_col)
            lab = None if raw in (None, "") else task.label_of(str(raw), f"{path}:{n}")
            out.append(Example(str(r[text_col]), str(r[text_pair_col]) if text_pair_col else None, None, lab,
                               {"index": i}))
        return out

    patterns = {s: [_S(f"{s}.{ext}", parse, lay) for ext in ("csv", "tsv", "jsonl", "json")]
                for s in ("train", "dev", "validation", "test")}
    patterns["dev"] += patterns["validation"]  # dev.* else validation.*
    names = [] if kind == "regression" else list(label_names or [])
    return Task(name=name, kind=kind or INFER, num_labels=max(len(names), 1), label_names=names,
                metrics=_metrics_for(kind or ""), hub=("", None), folder=".", sources=patterns,
                symmetric=kind == "similarity", labels_from_files=_labels_reader(label_col, bool(text_pair_col)))
