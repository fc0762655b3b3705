"""The custom task: your own CSV / TSV / JSON-lines / parquet files or ``datasets`` data, their columns named by
--text-col / --text-pair-col / --label-col, its kind and classes inferred from the labels only when they are
unambiguous.

**Files** (gptscale.tasks.readers, one parser per format by suffix): ``.csv`` (the csv module, quoted fields),
``.tsv`` (tab-separated, unquoted), ``.jsonl`` / ``.json`` (one JSON object per line). A CSV/TSV needs a header
row and every row exactly its fields (a tab inside a TSV text is an error at its line, never a new class). The
text column(s) must be in every file and the label column in every train / dev / validation file, each row with
a label; a test file may leave labels out. All of this is checked when a file is read: for fine-tuning, before
the model or the DeepSpeed engine is built. A missing column names the file, the column and the columns there.

**datasets** (gptscale/tasks/datasets_io.py, read with the datasets / pyarrow libraries into the same rows):
``{split}.parquet``, ``{split}-*.parquet``, ``data/{split}-*.parquet`` (the Hub's layout), ``{split}/*.parquet``,
``{split}.arrow``, a DatasetDict save_to_disk folder (``{split}/state.json``), a single Dataset's save_to_disk
folder (read for every split, epochs selected on a held-out part, as a single file), and ``hf:NAME[:CONFIG]``
(datasets.load_dataset). Splits: train, dev else validation, test, as for files. A ClassLabel label column
gives the classes, in id order (unless --finetune.label_names names them).

**Label inference** (no --finetune.task_kind, no --finetune.label_names), on the distinct labels of the train
file (else dev, else validation, else a test file with labels). A *number* is a decimal literal (``-2``,
``0.5``, ``1e-3``; a JSON number); ``nan``, ``inf``, ``true`` are names:

- every label a number and at least one with a fractional part (``0.5``, ``3.8``; integers such as ``4`` may
  appear too) -> ``regression``;
- every label an integer literal and together exactly ``0, 1, ..., K-1`` with K >= 2 -> ``classification``
  with classes ``"0" .. "K-1"`` (label i is class i);
- no label a number -> ``classification``, the classes being the distinct labels in sorted order;
- anything else is a TaskDataError naming the file, the label column and the labels seen, asking for
  --finetune.task_kind: integers that are not 0..K-1 (``-1/1``, ``1/2/5``, star ratings 1..5), integer-valued
  floats only (``0.0/1.0``), numbers mixed with names (``0/1/pos/neg``), or a single distinct label.

Classification of a pair file (--text-pair-col) becomes ``entailment``.

**Explicit kind** (--finetune.task_kind): ``regression`` needs every label to be a finite number (an error at
its file:line otherwise) and takes no label_names. ``classification`` / ``entailment`` / ``similarity``: with
--finetune.label_names, each label must be one of those names (or its index 0..K-1 when no name is a number);
without, the classes are the train file's distinct labels, numbers in numeric order (so -1/1 -> -1 is class
0, 1 is class 1, and 0..K-1 keep their ids), names in sorted order; numbers mixed with names are an error
asking for --finetune.label_names. --finetune.label_names alone means classification (entailment for pairs)
with those classes. Labels of the other splits must be classes of the train file (error at file:line).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptscale.tasks import datasets_io
from gptscale.tasks.base import _S, INFER, Example, Parser, Source, Task, TaskDataError
from gptscale.tasks.readers import Table, read_table

CUSTOM_KINDS = ("classification", "entailment", "similarity", "regression")
"""The kinds a custom task can be (--finetune.task_kind)."""
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
INTEGER = re.compile(r"[+-]?\d+")
LABELLED_SPLITS = ("train", "dev", "validation")
"""Splits whose every row needs a label (a test file's labels are optional)."""
KIND_FLAG = "--finetune.task_kind=classification|regression (text pairs: entailment|similarity)"
COLUMN_FLAGS = "--text-col / --text-pair-col / --label-col"
SPLIT_PATTERNS = ("{}.csv", "{}.tsv", "{}.jsonl", "{}.json", "{}.parquet", "{}-*.parquet", "data/{}-*.parquet",
                  "{}/*.parquet", "{}.arrow", "{}/state.json")
"""Where a split's file(s) may be, first found wins ({} is the split name); the last: a DatasetDict's split."""
FORMATS = "CSV/TSV with a header, JSON lines, parquet, .arrow or a DatasetDict save_to_disk split folder"


@dataclass(frozen=True)
class Columns:
    """The columns a custom task reads."""

    text: str
    pair: str | None
    label: str

    @property
    def texts(self) -> list[str]:
        return [self.text] + ([self.pair] if self.pair else [])


def label_text(raw: Any, where: str, col: str) -> str | None:
    """A label as text, None when missing or empty: strings stripped, JSON numbers as written, true / false."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (int, float)):
        return repr(raw)
    if isinstance(raw, str):
        return raw.strip() or None
    raise TaskDataError(f"{where}: the label in column {col!r} is a JSON {type(raw).__name__} ({raw!r}); a label "
                        f"is a string or a number")


def _text(rec: dict[str, Any], col: str, where: str) -> str:
    value = rec[col]
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    what = "null" if value is None else f"a {type(value).__name__}"
    raise TaskDataError(f"{where}: column {col!r} holds {what}, not a text")


def read_checked(paths: list[Path], cols: Columns, need_label: bool, layout: str) -> Table:
    """The rows of a custom-task split whose text columns (and label column when ``need_label``) are all
    there: in the CSV/TSV header or the table's columns, or on every JSON line; TaskDataError naming the file
    (or folder), the column, the columns there and the fix."""
    table = read_table(paths)
    where, head = table.where, table.head
    if not table.rows:
        raise TaskDataError(f"{where}: no rows{' after the header' if head and not table.shards else ''}; "
                            f"expected {layout}")
    want = cols.texts + ([cols.label] if need_label else [])
    if head is not None:
        missing = [c for c in want if c not in head]
        if missing:
            raise TaskDataError(f"{where}: no column(s) {missing}; {table.columns_are} {head}; expected {layout}; "
                                f"set {COLUMN_FLAGS} to the file's column names")
        return table
    for n, r in table.rows:
        missing = [c for c in want if r.get(c) is None]
        if missing:
            raise TaskDataError(f"{where}:{n}: no key(s) {missing} (or null); this line has {sorted(r)}; expected "
                                f"{layout}; set {COLUMN_FLAGS} to the file's keys")
    return table


def _shown(labels: list[str]) -> str:
    more = f" ... ({len(labels)} distinct)" if len(labels) > 12 else ""
    return f"{labels[:12]}{more}"


def _classes(distinct: list[str], nums: list[str], where: str) -> list[str]:
    """Class names of an explicitly classifying task without label_names (see the module docstring)."""
    if nums and len(nums) < len(distinct):
        raise TaskDataError(f"{where}: labels {_shown(distinct)} mix numbers and names; give the classes in id "
                            f"order with --finetune.label_names=NAME0,NAME1,... (a number then means a class id)")
    return sorted(distinct, key=float) if nums else distinct


def infer_labels(values: list[str], where: str, kind: str | None, names: Sequence[str]) -> tuple[str, list[str]]:
    """("regression" | "classification", class names) of a train file's labels ``values`` by the rule of the
    module docstring; ``kind`` / ``names`` are what the user set (None / empty: infer). ``where`` names the
    file and label column for the errors."""
    distinct = sorted(set(values))
    nums = [v for v in distinct if NUMBER.fullmatch(v)]
    if kind == "regression":
        bad = [v for v in distinct if v not in nums]
        if bad:
            raise TaskDataError(f"{where}: labels {_shown(bad)} are not numbers; --finetune.task_kind=regression needs "
                                f"a number on every row (or set --finetune.task_kind=classification)")
        return "regression", []
    if names:
        return "classification", list(names)
    if kind is not None:
        return "classification", _classes(distinct, nums, where)
    ask = (f"pass {KIND_FLAG}, and for classes in your own order --finetune.label_names=NAME0,NAME1,...")
    if len(distinct) < 2:
        raise TaskDataError(f"{where}: a single distinct label {distinct}: the kind cannot be inferred; {ask}")
    if len(nums) == len(distinct):
        if any(float(v) % 1 for v in nums):
            return "regression", []
        if all(INTEGER.fullmatch(v) for v in nums) and sorted(nums, key=int) == [str(i) for i in range(len(nums))]:
            return "classification", [str(i) for i in range(len(nums))]
        raise TaskDataError(f"{where}: labels {_shown(sorted(distinct, key=float))} are whole numbers but not the "
                            f"class ids 0..{len(distinct) - 1}: classes or a regression target? {ask}")
    if not nums:
        return "classification", distinct
    raise TaskDataError(f"{where}: labels {_shown(distinct)} mix numbers {_shown(nums)} with names: the kind and "
                        f"classes cannot be inferred; fix the file, or {ask}")


def _metrics_for(kind: str) -> list[str]:
    return ["pearson", "spearman"] if kind == "regression" else ["accuracy"]


def _labels_reader(cols: Columns) -> Callable[[Task, Path], Task]:
    """``Task.labels_from_files`` of a custom task: kind, labels and metrics from the label column of the
    train file under the data folder (else dev, validation, or a test file that has labels)."""

    def labelled(task: Task, data_dir: Path) -> Task:
        found = task.available_splits(data_dir)
        split = next((s for s in found if s in LABELLED_SPLITS), "test" if "test" in found else None)
        if split is None:
            return task  # no file at all: loading a split reports it
        need = split in LABELLED_SPLITS
        paths, src = task.resolve(data_dir, split)
        table = read_checked(paths, cols, need, src.layout)
        values = [label_text(r.get(cols.label), table.at(n), cols.label) for n, r in table.rows]
        values = [v for v in values if v is not None]
        if not values:
            if need:
                raise TaskDataError(f"{table.where}: column {cols.label!r} holds no label; a {split} file needs "
                                    f"one on every row (set --label-col to the label column)")
            return task  # an unlabelled test file alone: nothing to infer
        family, names = infer_labels(values, f"{table.where} (label column {cols.label!r})",
                                     None if task.kind == INFER else task.kind,
                                     task.label_names or table.classes.get(cols.label, []))
        kind = task.kind if task.kind != INFER else "entailment" if cols.pair and family == "classification" \
            else family
        return dataclasses.replace(task, kind=kind, label_names=names, num_labels=max(len(names), 1),
                                   metrics=_metrics_for(family))

    return labelled


def _parser(cols: Columns, need_label: bool, layout: str) -> Parser:
    """Parser of one split's file; ``need_label``: every row has a label (train / dev / validation)."""

    def parse(task: Task, paths: list[Path]) -> list[Example]:
        table = read_checked(paths, cols, need_label, layout)
        out = []
        for i, (n, r) in enumerate(table.rows):
            where = table.at(n)
            raw = label_text(r.get(cols.label), where, cols.label)
            if raw is None and need_label:
                raise TaskDataError(f"{where}: no label in column {cols.label!r}; every row of a train / dev file "
                                    f"needs one (only a test file may leave labels out)")
            lab = None if raw is None else task.label_of(raw, where)
            out.append(Example(_text(r, cols.text, where), _text(r, cols.pair, where) if cols.pair else None, None,
                               lab, {"index": i}))
        return out

    return parse


def custom_task(text_col: str = "text", text_pair_col: str | None = None, label_col: str = "label",
                kind: str | None = None, label_names: Sequence[str] | None = None, name: str = "custom") -> Task:
    """A task from your own files: ``{split}.csv|tsv|jsonl|json``, parquet, arrow or datasets folders in
    data_dir (SPLIT_PATTERNS; or data_dir is the file itself, used for any split: see registry.task_for; or a
    single Dataset's save_to_disk folder, or ``hf:NAME[:CONFIG]``: datasets_io.bind_data_dir). ``kind`` (one
    of CUSTOM_KINDS) and the classes are inferred from the train labels when not given, by the rule of the
    module docstring. The Task returned leaves them to ``Task.with_labels(data_dir)`` (task_for and
    ``Task.load`` call it), which returns a new Task: this one never changes."""
    if kind is not None and kind not in CUSTOM_KINDS:
        raise TaskDataError(f"custom task: kind {kind!r} is not one of {CUSTOM_KINDS}; set {KIND_FLAG}")
    names = list(label_names or [])
    if kind == "regression" and names:
        raise TaskDataError(f"custom task: label_names {names} are classes, but --finetune.task_kind=regression "
                            f"has none; drop --finetune.label_names or set another kind")
    if len(set(names)) < len(names):
        raise TaskDataError(f"custom task: label_names {names} repeat a name; give each class once, in id order")
    cols = Columns(text_col, text_pair_col or None, label_col)
    patterns = {s: _split_sources(s, cols) for s in ("train", "dev", "validation", "test")}
    patterns["dev"] += patterns["validation"]  # dev.* else validation.*
    one = f"a datasets save_to_disk folder of one Dataset (read for every split), {_with(cols)}"
    patterns["train"].append(_S(datasets_io.DATASET_STATE, _parser(cols, True, one), one))
    return Task(name=name, kind=kind or INFER, num_labels=max(len(names), 1), label_names=names,
                metrics=_metrics_for(kind or ""), hub=("", None), folder=".", sources=patterns,
                symmetric=kind == "similarity", labels_from_files=_labels_reader(cols),
                data_for=datasets_io.bind_data_dir)


def _with(cols: Columns) -> str:
    return f"with columns {cols.texts + [cols.label]} (label optional on test)"


def _split_sources(split: str, cols: Columns) -> list[Source]:
    """Where one split of a custom task may be, first found wins: its CSV / TSV / JSON-lines file, parquet
    file(s), arrow file, DatasetDict split folder (see the module docstring); one parser for all of them."""
    lay = f"{FORMATS}, {_with(cols)}"
    parse = _parser(cols, split in LABELLED_SPLITS, lay)
    return [_S(pat.format(split), parse, lay) for pat in SPLIT_PATTERNS]
