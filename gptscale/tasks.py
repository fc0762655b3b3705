"""GPT-1 fine-tuning tasks: registry, local loaders, and the paper's input transformations (section 3.3).

    task = TASKS["rte"]
    train = task.load("../shared/data", "train")         # or load_task("rte", "../shared/data/glue/RTE", "train")
    seqs = encode_example(task, train[0], tok, max_len=512)       # list of token-id lists
    ids, extract_pos, lm_mask = collate([seqs, ...], tok.pad_id)  # (B, n_seq, T), (B, n_seq), (B, n_seq, T)

**Files.** Every loader reads local files with the stdlib (``csv`` with ``QUOTE_NONE`` for the GLUE TSVs,
which contain unbalanced quotes; ``json``), or pyarrow for IMDB parquet. ``data_dir`` is either the data
root (holding ``glue/RTE``, ``scitail``, ``race``, ``story_cloze``, ``imdb`` ...), the ``glue`` folder, or
the task folder itself. ``Task.resolve(data_dir, split)`` says which file(s) a split reads. Split names:

- ``train`` / ``dev`` / ``test``: the standard GLUE files (``dev_matched.tsv`` / ``test_matched.tsv`` for
  MNLI). Where only the shared samples exist, ``train`` falls back to ``train_9k_sample.json`` and ``dev``
  to ``dev_1k_sample_from_train.json`` (MNLI, QNLI train, QQP, SNLI). That "dev" sample is drawn from the
  original TRAIN set: scores on it are not comparable to published dev scores.
- MNLI also has ``dev_matched``, ``dev_mismatched``, ``test_matched``, ``test_mismatched``.
- Explicit sample splits: ``train_9k_sample``, ``dev_1k_sample``, ``kshot16_train``, ``kshot16_dev``
  (MNLI's ``kshot16_dev_matched.tsv``).
- ``scitail``: train/dev/test (``scitail_1.0_{split}.tsv``); ``race``: train/dev/test (``{split}-middle.jsonl``
  + ``{split}-high.jsonl``); ``story_cloze``: ``val`` (= ``train``: GPT-1 fine-tuned on it) and ``test``;
  ``imdb``: train/test (HF parquet, ``train.csv``, or the ``aclImdb`` folder).

Test splits of GLUE carry no labels: ``Example.label`` is None and ``meta["index"]`` keeps the GLUE
``index`` column for submission files. Any missing file, missing column or unknown label is a
``TaskDataError`` naming the file (and line), the expected layout and the ``--data-dir`` to pass.

**Labels** follow the Hugging Face GLUE conventions: CoLA unacceptable=0/acceptable=1, SST-2 negative/positive,
MRPC not_equivalent/equivalent, QQP not_duplicate/duplicate, MNLI and SNLI entailment/neutral/contradiction,
QNLI and RTE entailment=0/not_entailment=1, WNLI not_entailment=0/entailment=1 (the TSV's 1 means entailment),
SciTail entails=0/neutral=1, STS-B a float in [0, 5], RACE A-D -> 0-3, Story Cloze ending 1/2 -> 0/1.
SNLI pairs without a gold label (``-``) are dropped, as everyone does.

**Input transformations** (GPT-1 Figure 1), token ids with the tokenizer's start / delim / extract ids:

- classification:  ``[start] a [extract]``
- entailment:      ``[start] premise [delim] hypothesis [extract]`` (also non-symmetric regression pairs)
- similarity:      both ``[start] a [delim] b [extract]`` and ``[start] b [delim] a [extract]`` (MRPC, QQP,
  STS-B); the model sums the two extract states
- multiple choice: one ``[start] context [delim] answer_k [extract]`` per choice; RACE's context is the
  article followed by ``" " + question`` (the question is encoded separately, so it is never cut off).

**Truncation** (``truncation=`` of ``encode_example``), every sequence always fits ``max_len`` and keeps its
special tokens; text is cut from the end of a segment:

- single segment: ``a[:max_len - 2]``.
- ``"halves"`` (default, the GPT-1 reference code's rule): each of the two segments keeps at most
  ``max_len // 2 - 2`` tokens (total <= ``max_len - 1``).
- ``"share"``: the two segments share ``B = max_len - 3`` tokens: when both fit nothing is cut, else the
  shorter keeps ``min(len, B // 2)`` and the longer gets the rest (never less text than ``"halves"``).
- multiple choice: each answer follows the rule above against the context; the context budget is then
  ``max_len - 3 - (longest kept answer)`` so every choice sees the same context. When there is a question
  (RACE) article and question share that budget by the ``"share"`` rule (question kept whole if it fits
  in half of it).
"""

from __future__ import annotations

import csv
import glob
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gptscale import metrics as metrics_mod

KINDS = ("classification", "entailment", "similarity", "regression", "multiple_choice")
TRUNCATION = ("halves", "share")


class TaskDataError(ValueError):
    """Task files that are missing or not in the expected layout; the message names file, layout and fix."""


@dataclass
class Example:
    """One task example. ``choices`` only for multiple choice; ``label`` None on unlabelled test splits."""

    text_a: str
    text_b: str | None = None
    choices: list[str] | None = None
    label: int | float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


Parser = Callable[["Task", list[Path]], list[Example]]


@dataclass(frozen=True)
class Source:
    """One way to find a split: glob patterns inside the task folder (all must match) and their parser."""

    patterns: tuple[str, ...]
    parse: Parser
    layout: str
    """Human description of the expected file layout (for error messages)."""


@dataclass
class Task:
    """A fine-tuning task: what it predicts, how it is scored, where its local files are."""

    name: str
    kind: str
    num_labels: int
    """Classes (1 for regression, number of choices for multiple choice)."""
    label_names: list[str]
    metrics: list[str]
    """Metric names of gptscale.metrics.METRICS, primary first."""
    hub: tuple[str, str | None]
    """Hugging Face datasets (name, config) used when there is no local data."""
    folder: str
    """Sub-folder of the data root holding the files, e.g. 'glue/RTE'."""
    sources: dict[str, list[Source]]
    """Split name -> candidate sources, first found wins."""
    symmetric: bool = False
    """Pair input without a natural order: encode both orderings (GPT-1 similarity)."""

    @property
    def splits(self) -> tuple[str, ...]:
        """Split names this task knows how to read locally (see ``available_splits`` for what exists)."""
        return tuple(self.sources)

    # ------------------------------------------------------------------------------ file resolution

    def _folders(self, data_dir: Path) -> list[Path]:
        parts = Path(self.folder).parts
        cands = [data_dir / self.folder]
        if len(parts) > 1:
            cands.append(data_dir / parts[-1])  # data_dir is the glue/ folder
        cands.append(data_dir)                   # data_dir is the task folder itself
        return cands

    def _match(self, folder: Path, src: Source) -> list[Path] | None:
        found: list[Path] = []
        for pat in src.patterns:
            hits = sorted(Path(p) for p in glob.glob(str(folder / pat)))
            if not hits:
                return None
            found += hits
        return found

    def resolve(self, data_dir: str | Path, split: str) -> tuple[list[Path], Source]:
        """The file(s) ``split`` reads under ``data_dir`` and their source; TaskDataError when absent."""
        if split not in self.sources:
            raise TaskDataError(f"task {self.name!r} has no split {split!r}; known: {', '.join(self.sources)}")
        root = Path(data_dir)
        folders = [f for f in self._folders(root) if f.is_dir()]
        for folder in folders:
            for src in self.sources[split]:
                hits = self._match(folder, src)
                if hits:
                    return hits, src
        looked = ", ".join(str(f) for f in self._folders(root))
        wanted = " or ".join(f"{' + '.join(s.patterns)} ({s.layout})" for s in self.sources[split])
        raise TaskDataError(
            f"task {self.name!r} split {split!r}: no file found; looked in {looked} for {wanted}. "
            f"Pass --data-dir pointing at the data root (the folder holding {self.folder}/) or at the "
            f"task folder itself")

    def available_splits(self, data_dir: str | Path) -> list[str]:
        """Split names whose files exist under ``data_dir``."""
        out = []
        for split in self.sources:
            try:
                self.resolve(data_dir, split)
            except TaskDataError:
                continue
            out.append(split)
        return out

    def load(self, data_dir: str | Path, split: str) -> list[Example]:
        """Examples of ``split`` read from the local files under ``data_dir``; without them, from the
        Hugging Face Hub when online (gptscale.task_hub; never when HF_HUB_OFFLINE=1)."""
        try:
            paths, src = self.resolve(data_dir, split)
        except TaskDataError as local:
            from gptscale import task_hub

            if not self.hub[0] or split not in task_hub.HUB_SPLITS or task_hub.offline():
                raise
            try:
                return task_hub.load_from_hub(self, split)
            except Exception as e:  # no network, unknown split, gated dataset ...: report both ways tried
                raise TaskDataError(f"{local} The Hub fallback datasets.load_dataset{self.hub} failed too "
                                    f"({type(e).__name__}: {str(e)[:300]}); set HF_HUB_OFFLINE=1 to skip it") from None
        try:
            return src.parse(self, paths)
        except TaskDataError as e:
            raise TaskDataError(f"{e} [task {self.name} split {split!r} expects: {src.layout}; pass --data-dir "
                                f"pointing at the original files]") from None

    # ------------------------------------------------------------------------------------- labels

    def label_of(self, raw: str, where: str) -> int | float:
        """Label index (or float for regression) of a raw label string from a file."""
        raw = raw.strip()
        if self.kind == "regression":
            try:
                return float(raw)
            except ValueError:
                raise TaskDataError(f"{where}: label {raw!r} is not a number (task {self.name} is a "
                                    f"regression)") from None
        if raw in self.label_names:
            return self.label_names.index(raw)
        if raw.isdigit() and int(raw) < self.num_labels:
            return int(raw)
        raise TaskDataError(f"{where}: unknown label {raw!r} for task {self.name}; expected one of "
                            f"{self.label_names} or 0..{self.num_labels - 1}")


# ------------------------------------------------------------------------------------------- readers


def _read_tsv(path: Path) -> list[list[str]]:
    """Rows of a TSV (UTF-8, BOM dropped, no quoting: GLUE text contains bare quotes)."""
    csv.field_size_limit(sys.maxsize)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as e:
        raise TaskDataError(f"{path}: not UTF-8 ({e})") from None


def _tsv(a: str | int, b: str | int | None = None, label: str | int | None = None,
         index: str | int | None = None, *, header: bool = True, skip_labels: tuple[str, ...] = ()) -> Parser:
    """Parser of a tab-separated file: columns by header name (str) or position (int, may be negative)."""

    def parse(task: Task, paths: list[Path]) -> list[Example]:
        path = paths[0]
        rows = _read_tsv(path)
        head = rows[0] if header and rows else []
        body = rows[1:] if header else rows
        first_line = 2 if header else 1
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
        for n, row in enumerate(body, start=first_line):
            if not row or row == [""]:
                continue
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


def _race(task: Task, paths: list[Path]) -> list[Example]:
    """RACE JSON lines (one passage per line): one Example per question, meta level/id/question index."""
    out = []
    for path in paths:
        level = "middle" if "middle" in path.name else "high" if "high" in path.name else ""
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                    qs, opts, ans = d["questions"], d["options"], d.get("answers")
                    art = d["article"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise TaskDataError(f"{path}:{n}: expected a JSON object with article, questions, options, "
                                        f"answers, id ({type(e).__name__}: {e})") from None
                for q, (question, options) in enumerate(zip(qs, opts)):
                    if len(options) != 4:
                        raise TaskDataError(f"{path}:{n}: question {q} has {len(options)} options, RACE has 4")
                    lab = None
                    if ans is not None:
                        if ans[q] not in "ABCD" or len(ans[q]) != 1:
                            raise TaskDataError(f"{path}:{n}: answer {ans[q]!r} is not one of A, B, C, D")
                        lab = "ABCD".index(ans[q])
                    out.append(Example(art, question, list(options), lab,
                                       {"id": d.get("id"), "level": level, "question": q}))
    return out


STORY_COLS = ["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
              "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"]


def _story_cloze(task: Task, paths: list[Path]) -> list[Example]:
    path = paths[0]
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in STORY_COLS[:-1] if c not in (reader.fieldnames or [])]
        if missing:
            raise TaskDataError(f"{path}: missing column(s) {missing}; expected a CSV with header {STORY_COLS} "
                                f"(Story Cloze 2016); pass --data-dir with the original val/test CSVs")
        out = []
        for n, r in enumerate(reader, 2):
            ctx = " ".join(r[f"InputSentence{i}"].strip() for i in range(1, 5))
            raw = (r.get("AnswerRightEnding") or "").strip()
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
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
            if not {"text", "label"} <= set(names):
                raise TaskDataError(f"{path}: columns {names}; expected text, label (stanfordnlp/imdb parquet)")
            t = pq.read_table(path, columns=["text", "label"]).to_pydict()
            texts, labels = t["text"], t["label"]
        else:
            with open(path, encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f)
                if not {"text", "label"} <= set(reader.fieldnames or []):
                    raise TaskDataError(f"{path}: header {reader.fieldnames}; expected a CSV with text,label")
                rows = list(reader)
            texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
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


# ------------------------------------------------------------------------------------------ registry

GLUE_TSV = "GLUE TSV"
SAMPLE = 'JSON {"i": {"text_a", "text_b", "label"}}'


def _S(pattern: str | tuple[str, ...], parse: Parser, layout: str) -> Source:
    return Source((pattern,) if isinstance(pattern, str) else pattern, parse, layout)


def _glue_pair(a: str, b: str, label: str) -> dict[str, list[Source]]:
    """train/dev/test of a GLUE pair task with an ``index`` column, plus the shared sample fallbacks."""
    lay = f"{GLUE_TSV} with header: index {a} {b} {label}"
    return {
        "train": [_S("train.tsv", _tsv(a, b, label, "index"), lay), _S("train_9k_sample.json", _json_sample, SAMPLE)],
        "dev": [_S("dev.tsv", _tsv(a, b, label, "index"), lay),
                _S("dev_1k_sample_from_train.json", _json_sample, SAMPLE)],
        "test": [_S("test.tsv", _tsv(a, b, None, "index"), f"{GLUE_TSV} with header: index {a} {b}")],
        "train_9k_sample": [_S("train_9k_sample.json", _json_sample, SAMPLE)],
        "dev_1k_sample": [_S("dev_1k_sample_from_train.json", _json_sample, SAMPLE)],
    }


def _nli_sources(dev: str, test: str, kshot_dev: str) -> dict[str, list[Source]]:
    """MNLI / SNLI in the GLUE layout: sentence1, sentence2, gold_label last (rows may carry label1..label5)."""
    lay = f"{GLUE_TSV} with header: index ... sentence1 sentence2 label1 [label2..5] gold_label (last column)"
    p = _tsv("sentence1", "sentence2", -1, "index", skip_labels=("-",))
    tp = _tsv("sentence1", "sentence2", None, "index")
    return {
        "train": [_S("train.tsv", p, lay), _S("train_9k_sample.json", _json_sample, SAMPLE)],
        "dev": [_S(dev, p, lay), _S("dev_1k_sample_from_train.json", _json_sample, SAMPLE)],
        "test": [_S(test, tp, f"{GLUE_TSV} with header: index ... sentence1 sentence2")],
        "train_9k_sample": [_S("train_9k_sample.json", _json_sample, SAMPLE)],
        "dev_1k_sample": [_S("dev_1k_sample_from_train.json", _json_sample, SAMPLE)],
        "kshot16_train": [_S("kshot16_train.tsv", p, lay)],
        "kshot16_dev": [_S(kshot_dev, p, lay)],
    }


def _build_tasks() -> dict[str, Task]:
    T: dict[str, Task] = {}

    def add(**kw: Any) -> None:
        T[kw["name"]] = Task(**kw)

    cola_lay = "GLUE TSV without header: source, label, original-label, sentence"
    add(name="cola", kind="classification", num_labels=2, label_names=["unacceptable", "acceptable"],
        metrics=["mcc", "accuracy"], hub=("nyu-mll/glue", "cola"), folder="glue/CoLA", sources={
            "train": [_S("train.tsv", _tsv(3, None, 1, header=False), cola_lay)],
            "dev": [_S("dev.tsv", _tsv(3, None, 1, header=False), cola_lay)],
            "test": [_S("test.tsv", _tsv("sentence", None, None, "index"), f"{GLUE_TSV} with header: index sentence")],
        })
    sst_lay = f"{GLUE_TSV} with header: sentence label"
    add(name="sst2", kind="classification", num_labels=2, label_names=["negative", "positive"],
        metrics=["accuracy"], hub=("nyu-mll/glue", "sst2"), folder="glue/SST-2", sources={
            "train": [_S("train.tsv", _tsv("sentence", None, "label"), sst_lay)],
            "dev": [_S("dev.tsv", _tsv("sentence", None, "label"), sst_lay)],
            "test": [_S("test.tsv", _tsv("sentence", None, None, "index"), f"{GLUE_TSV} with header: index sentence")],
        })
    imdb_sources: dict[str, list[Source]] = {}
    for split in ("train", "test"):
        imdb_sources[split] = [
            _S(f"plain_text/{split}-*.parquet", _imdb_table, "HF stanfordnlp/imdb parquet (text, label)"),
            _S(f"{split}-*.parquet", _imdb_table, "HF parquet (text, label)"),
            _S(f"data/{split}-*.parquet", _imdb_table, "HF parquet (text, label)"),
            _S(f"{split}.csv", _imdb_table, "CSV with header text,label"),
            _S((f"{split}/pos", f"{split}/neg"), _imdb_acl, f"aclImdb {split}/pos/*.txt and {split}/neg/*.txt"),
            _S((f"aclImdb/{split}/pos", f"aclImdb/{split}/neg"), _imdb_acl, "aclImdb folder"),
        ]
    add(name="imdb", kind="classification", num_labels=2, label_names=["neg", "pos"], metrics=["accuracy"],
        hub=("stanfordnlp/imdb", None), folder="imdb", sources=imdb_sources)

    mrpc_lay = f"{GLUE_TSV} with header (UTF-8 BOM): Quality, #1 ID, #2 ID, #1 String, #2 String"
    add(name="mrpc", kind="similarity", num_labels=2, label_names=["not_equivalent", "equivalent"],
        metrics=["f1", "accuracy"], hub=("nyu-mll/glue", "mrpc"), folder="glue/MRPC", symmetric=True, sources={
            "train": [_S("train.tsv", _tsv("#1 String", "#2 String", "Quality"), mrpc_lay)],
            "dev": [_S("dev.tsv", _tsv("#1 String", "#2 String", "Quality"), mrpc_lay)],
            "test": [_S("test.tsv", _tsv("#1 String", "#2 String", None, "index"),
                        f"{GLUE_TSV} with header: index, #1 ID, #2 ID, #1 String, #2 String")],
        })
    sts_lay = f"{GLUE_TSV} with 10 columns: index genre filename year old_index source1 source2 sentence1 sentence2 score"
    add(name="stsb", kind="regression", num_labels=1, label_names=[], metrics=["pearson", "spearman"],
        hub=("nyu-mll/glue", "stsb"), folder="glue/STS-B", symmetric=True, sources={
            "train": [_S("train.tsv", _tsv("sentence1", "sentence2", "score", "index"), sts_lay)],
            "dev": [_S("dev.tsv", _tsv("sentence1", "sentence2", "score", "index"), sts_lay)],
            "test": [_S("test.tsv", _tsv("sentence1", "sentence2", None, "index"), sts_lay.replace(" score", ""))],
        })
    qqp_lay = f"{GLUE_TSV} with header: id qid1 qid2 question1 question2 is_duplicate"
    qp = _tsv("question1", "question2", "is_duplicate", "id")
    add(name="qqp", kind="similarity", num_labels=2, label_names=["not_duplicate", "duplicate"],
        metrics=["f1", "accuracy"], hub=("nyu-mll/glue", "qqp"), folder="glue/QQP", symmetric=True, sources={
            "train": [_S("train.tsv", qp, qqp_lay), _S("train_9k_sample.json", _json_sample, SAMPLE)],
            "dev": [_S("dev.tsv", qp, qqp_lay), _S("dev_1k_sample_from_train.json", _json_sample, SAMPLE)],
            "test": [_S("test.tsv", _tsv("question1", "question2", None, "id"),
                        f"{GLUE_TSV} with header: id question1 question2")],
            "train_9k_sample": [_S("train_9k_sample.json", _json_sample, SAMPLE)],
            "dev_1k_sample": [_S("dev_1k_sample_from_train.json", _json_sample, SAMPLE)],
            "kshot16_train": [_S("kshot16_train.tsv", qp, qqp_lay)],
            "kshot16_dev": [_S("kshot16_dev.tsv", qp, qqp_lay)],
        })
    nli3 = ["entailment", "neutral", "contradiction"]
    mnli = _nli_sources("dev_matched.tsv", "test_matched.tsv", "kshot16_dev_matched.tsv")
    p = _tsv("sentence1", "sentence2", -1, "index", skip_labels=("-",))
    lay = f"{GLUE_TSV} with header: index ... sentence1 sentence2 label1 .. gold_label"
    tp = _tsv("sentence1", "sentence2", None, "index")
    mnli.update({
        "dev_matched": [_S("dev_matched.tsv", p, lay)], "dev_mismatched": [_S("dev_mismatched.tsv", p, lay)],
        "test_matched": [_S("test_matched.tsv", tp, lay)], "test_mismatched": [_S("test_mismatched.tsv", tp, lay)],
    })
    add(name="mnli", kind="entailment", num_labels=3, label_names=nli3, metrics=["accuracy"],
        hub=("nyu-mll/glue", "mnli"), folder="glue/MNLI", sources=mnli)
    add(name="snli", kind="entailment", num_labels=3, label_names=nli3, metrics=["accuracy"],
        hub=("stanfordnlp/snli", None), folder="glue/SNLI", sources=_nli_sources("dev.tsv", "test.tsv",
                                                                                 "kshot16_dev.tsv"))
    add(name="qnli", kind="entailment", num_labels=2, label_names=["entailment", "not_entailment"],
        metrics=["accuracy"], hub=("nyu-mll/glue", "qnli"), folder="glue/QNLI",
        sources=_glue_pair("question", "sentence", "label"))
    for name, folder, names in (("rte", "RTE", ["entailment", "not_entailment"]),
                                ("wnli", "WNLI", ["not_entailment", "entailment"])):
        src = _glue_pair("sentence1", "sentence2", "label")
        for k in ("train_9k_sample", "dev_1k_sample"):
            del src[k]
        src["train"], src["dev"] = src["train"][:1], src["dev"][:1]
        add(name=name, kind="entailment", num_labels=2, label_names=names, metrics=["accuracy"],
            hub=("nyu-mll/glue", name), folder=f"glue/{folder}", sources=src)
    sci_lay = "TSV without header: premise, hypothesis, entails|neutral (SciTail v1.1 tsv_format)"
    add(name="scitail", kind="entailment", num_labels=2, label_names=["entails", "neutral"], metrics=["accuracy"],
        hub=("allenai/scitail", "tsv_format"), folder="scitail", sources={
            s: [_S(f"scitail_1.0_{s}.tsv", _tsv(0, 1, 2, header=False), sci_lay)] for s in ("train", "dev", "test")})
    race_lay = 'JSON lines {"article", "questions", "options", "answers", "id"}'
    add(name="race", kind="multiple_choice", num_labels=4, label_names=["A", "B", "C", "D"], metrics=["accuracy"],
        hub=("ehovy/race", "all"), folder="race", sources={
            **{s: [_S((f"{s}-middle.jsonl", f"{s}-high.jsonl"), _race, race_lay)] for s in ("train", "dev", "test")},
            **{f"{s}_{lv}": [_S(f"{s}-{lv}.jsonl", _race, race_lay)]
               for s in ("train", "dev", "test") for lv in ("middle", "high")}})
    sc_lay = "CSV with header InputStoryid, InputSentence1..4, RandomFifthSentenceQuiz1/2, AnswerRightEnding"

    def sc(s: str) -> list[Source]:
        return [_S(f"{s}.csv", _story_cloze, sc_lay),
                _S(f"cloze_test_{s}__spring2016 - cloze_test_ALL_{s}.csv", _story_cloze, sc_lay)]

    add(name="story_cloze", kind="multiple_choice", num_labels=2, label_names=["ending1", "ending2"],
        metrics=["accuracy"], hub=("LSDSem/story_cloze", "2016"), folder="story_cloze",
        sources={"train": sc("val"), "val": sc("val"), "test": sc("test")})
    T["custom"] = custom_task()
    return T


# ---------------------------------------------------------------------------------------- custom task


def _read_records(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        out = []
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise TaskDataError(f"{path}:{n}: not a JSON line ({e})") from None
        return out
    delim = "\t" if suffix == ".tsv" else ","
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter=delim, quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL))


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


def custom_task(text_col: str = "text", text_pair_col: str | None = None, label_col: str = "label",
                kind: str | None = None, label_names: Sequence[str] | None = None, name: str = "custom") -> Task:
    """A task from your own CSV / TSV / JSONL files: ``{split}.csv|tsv|jsonl`` in data_dir (or data_dir is
    the file itself, used for any split). ``kind`` (classification / regression, or entailment for pairs)
    is inferred from the labels of the train file when not given: integers -> classes 0..max, other numbers
    -> regression, strings -> classes in sorted order (give ``label_names`` to fix the order)."""
    if kind is not None and kind not in KINDS:
        raise TaskDataError(f"custom task: kind {kind!r} is not one of {KINDS}")
    cols = [text_col] + ([text_pair_col] if text_pair_col else [])
    lay = f"CSV/TSV with a header, or JSON lines, with columns {cols + [label_col]} (label optional on test)"

    def parse(task: Task, paths: list[Path]) -> list[Example]:
        path = paths[0]
        recs = _read_records(path)
        if recs:
            missing = [c for c in cols if c not in recs[0]]
            if missing:
                raise TaskDataError(f"{path}: no column(s) {missing} (has {sorted(recs[0])}); expected {lay}; set "
                                    f"--text-col / --text-pair-col / --label-col")
        if task.kind == "?" or (task.kind != "regression" and not task.label_names):  # infer once, from train
            try:
                train_recs = _read_records(task.resolve(path.parent if path.is_file() else path, "train")[0][0])
            except TaskDataError:
                train_recs = recs
            k, names = _infer_labels([r.get(label_col) for r in train_recs])
            if task.label_names:
                k, names = "classification", task.label_names
            if task.kind == "?":
                task.kind = "entailment" if text_pair_col and k == "classification" else k
            task.label_names, task.num_labels = names, max(len(names), 1)
            task.metrics = ["pearson", "spearman"] if k == "regression" else ["accuracy"]
        out = []
        for n, r in enumerate(recs, 1):
            raw = r.get(label_col)
            lab = None if raw in (None, "") else task.label_of(str(raw), f"{path}:{n}")
            out.append(Example(str(r[text_col]), str(r[text_pair_col]) if text_pair_col else None, None, lab,
                               {"index": n - 1}))
        return out

    patterns = {s: [_S(f"{s}.{ext}", parse, lay) for ext in ("csv", "tsv", "jsonl", "json")]
                for s in ("train", "dev", "validation", "test")}
    names = list(label_names or [])
    k = kind or "?"
    if kind == "regression":
        names = []
    return Task(name=name, kind=k, num_labels=max(len(names), 1), label_names=names,
                metrics=["pearson", "spearman"] if kind == "regression" else ["accuracy"], hub=("", None),
                folder=".", sources=patterns)


TASKS: dict[str, Task] = _build_tasks()
"""The GPT-1 tasks (plus imdb and a default ``custom``) by name."""


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise TaskDataError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def load_task(name: str, data_dir: str | Path, split: str, **custom: Any) -> list[Example]:
    """Examples of ``split`` of task ``name``; ``custom`` keyword arguments go to ``custom_task``.

    For ``custom``, ``data_dir`` may be a single file (read whatever the split)."""
    if name == "custom":
        task = custom_task(**custom)
        p = Path(data_dir)
        if p.is_file():
            return task.sources["train"][0].parse(task, [p])
        return task.load(p, split)
    if custom:
        raise TaskDataError(f"task {name!r} takes no column options ({sorted(custom)}); those are for 'custom'")
    return get_task(name).load(data_dir, split)


# ------------------------------------------------------------------------------- input transformations


def _cut2(a: list[int], b: list[int], max_len: int, truncation: str) -> tuple[list[int], list[int]]:
    """Two segments cut so that [start] a [delim] b [extract] fits max_len (see the module docstring)."""
    if truncation == "halves":
        cap = max_len // 2 - 2
        return a[:cap], b[:cap]
    return _share(a, b, max_len - 3)


def _share(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """a and b cut to len(a) + len(b) <= budget: the shorter keeps min(len, budget // 2), the longer the rest."""
    budget = max(budget, 0)
    if len(a) + len(b) <= budget:
        return a, b
    if len(a) <= len(b):
        ka = min(len(a), budget // 2)
        return a[:ka], b[:budget - ka]
    kb = min(len(b), budget // 2)
    return a[:budget - kb], b[:kb]


def encode_example(task: Task, example: Example, tokenizer: Any, max_len: int,
                   truncation: str = "halves") -> list[list[int]]:
    """Token-id sequences of one example (GPT-1 Figure 1): 1 sequence, 2 for symmetric pairs (both orders),
    k for k-way multiple choice; each at most ``max_len`` tokens and always with its special tokens."""
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation must be one of {TRUNCATION}, got {truncation!r}")
    if max_len < 8:
        raise ValueError(f"max_len={max_len} is too small for the task formats (>= 8)")
    s, d, e = tokenizer.start_id, tokenizer.delim_id, tokenizer.extract_id
    if None in (s, d, e):
        raise ValueError(f"{tokenizer!r} lacks the start/delim/extract specials GPT-1's task formats need")
    enc = tokenizer.encode
    if task.kind == "multiple_choice" or example.choices is not None:
        if not example.choices:
            raise ValueError(f"task {task.name}: a multiple-choice example needs choices")
        article = enc(example.text_a)
        question = enc(" " + example.text_b) if example.text_b else []
        answers = [enc(c) for c in example.choices]
        ctx_full = article + question
        cut = [_cut2(ctx_full, ans, max_len, truncation)[1] for ans in answers]
        ctx_budget = max_len - 3 - max(len(c) for c in cut)
        if truncation == "halves":
            ctx_budget = min(ctx_budget, max_len // 2 - 2)
        art, q = _share(article, question, ctx_budget)
        return [[s] + art + q + [d] + ans + [e] for ans in cut]
    a = enc(example.text_a)
    if example.text_b is None:
        return [[s] + a[:max_len - 2] + [e]]
    b = enc(example.text_b)
    a, b = _cut2(a, b, max_len, truncation)
    seqs = [[s] + a + [d] + b + [e]]
    if task.symmetric:
        seqs.append([s] + b + [d] + a + [e])
    return seqs


def collate(encoded_batch: Sequence[Sequence[Sequence[int]]], pad_id: int) -> tuple[Any, Any, Any]:
    """Pad a batch of ``encode_example`` outputs.

    Returns torch tensors ``ids`` (B, n_seq, T) int64 padded with ``pad_id``, ``extract_pos`` (B, n_seq)
    int64 (index of each sequence's last token, the extract token) and ``lm_mask`` (B, n_seq, T) bool, True
    on real tokens (False on padding) for the auxiliary LM loss; T is the longest sequence of the batch.
    """
    import torch

    if not encoded_batch:
        raise ValueError("collate: empty batch")
    n_seq = {len(x) for x in encoded_batch}
    if len(n_seq) != 1:
        raise ValueError(f"collate: examples have different numbers of sequences {sorted(n_seq)}")
    ns = n_seq.pop()
    lens = np.array([[len(s) for s in x] for x in encoded_batch], dtype=np.int64)
    if lens.min() < 1:
        raise ValueError("collate: empty sequence in the batch")
    T = int(lens.max())
    ids = np.full((len(encoded_batch), ns, T), pad_id, dtype=np.int64)
    for i, x in enumerate(encoded_batch):
        for j, seq in enumerate(x):
            ids[i, j, :len(seq)] = seq
    mask = np.arange(T)[None, None, :] < lens[:, :, None]
    return torch.from_numpy(ids), torch.from_numpy(lens - 1), torch.from_numpy(mask)


# -------------------------------------------------------------------------------------------- scoring


def compute_metrics(task: Task, preds: Sequence[Any], examples: Sequence[Example]) -> dict[str, float]:
    """The task's metrics (primary first) on labelled examples; RACE adds ``accuracy_middle`` / ``_high``."""
    labels = [ex.label for ex in examples]
    if any(lab is None for lab in labels):
        raise ValueError(f"task {task.name}: some examples have no label (a test split?)")
    out = metrics_mod.compute(task.metrics, list(preds), labels)
    if task.name == "race":
        for level in ("middle", "high"):
            idx = [i for i, ex in enumerate(examples) if ex.meta.get("level") == level]
            if idx:
                out[f"accuracy_{level}"] = metrics_mod.accuracy([preds[i] for i in idx], [labels[i] for i in idx])
    return out


__all__ = [
    "TASKS",
    "Example",
    "Task",
    "TaskDataError",
    "collate",
    "compute_metrics",
    "custom_task",
    "encode_example",
    "get_task",
    "load_task",
]
