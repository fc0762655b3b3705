"""The task registry: every task's kind, labels, metrics, Hub name and local file sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptscale.tasks.base import _S, HELDOUT, Example, Source, Task, TaskDataError
from gptscale.tasks.readers import _imdb_acl, _imdb_table, _json_sample, _race, _story_cloze, _tsv, custom_task

# ------------------------------------------------------------------------------------------ registry

GLUE_TSV = "GLUE TSV"
SAMPLE = 'JSON {"i": {"text_a", "text_b", "label"}}'


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
        hub=("stanfordnlp/imdb", None), folder="imdb", sources=imdb_sources, dev_split=HELDOUT, heldout=2500)

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
        sources={"train": sc("val"), "val": sc("val"), "test": sc("test")},
        dev_split=HELDOUT, heldout=374)  # GPT-1's code: 1497 val stories train, 374 select, test.csv reports
    T["custom"] = custom_task()
    return T


TASKS: dict[str, Task] = _build_tasks()
"""The GPT-1 tasks (plus imdb and a default ``custom``) by name."""


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise TaskDataError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def task_for(name: str, data_dir: str | Path, **custom: Any) -> tuple[Task, Path]:
    """(task, folder its files are in). ``custom`` holds ``custom_task`` keyword arguments, which only task
    ``custom`` takes; its ``data_dir`` may be a single file, read for every split (fine-tuning then selects
    epochs on a held-out part of it)."""
    if name != "custom":
        if custom:
            raise TaskDataError(f"task {name!r} takes no column options ({sorted(custom)}); those are for 'custom'")
        return get_task(name), Path(data_dir)
    task = custom_task(**custom)
    p = Path(data_dir)
    if not p.is_file():
        return task, p
    first = task.sources["train"][0]
    task.sources = {s: [Source((p.name,), first.parse, first.layout)] for s in task.sources}
    task.dev_split = HELDOUT
    return task, p.parent


def load_task(name: str, data_dir: str | Path, split: str, **custom: Any) -> list[Example]:
    """Examples of ``split`` of task ``name``; ``custom`` keyword arguments go to ``custom_task`` (see task_for)."""
    task, folder = task_for(name, data_dir, **custom)
    return task.load(folder, split)
