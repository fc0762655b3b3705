"""The task registry: every task's kind, labels, metrics, Hub name and columns, local file sources and the
per-task rules (per-level accuracy, submission digits, ...) as Task fields. Adding a task touches this file only."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from gptscale.tasks.base import _S, HELDOUT, Example, Source, Task, TaskDataError
from gptscale.tasks.custom import custom_task
from gptscale.tasks.readers import (
    RACE_LEVELS,
    _imdb_acl,
    _imdb_table,
    _json_sample,
    _race,
    _story_cloze,
    _tsv,
)

# Task(name, kind, num_labels, label_names, metrics, hub, folder, sources, **per-task rules): see base.Task.
GLUE_TSV = "GLUE TSV"
SAMPLE = 'JSON {"i": {"text_a", "text_b", "label"}}'
PAIR_HUB = {"text_a": "sentence1", "text_b": "sentence2", "label": "label", "index": "idx"}
NLI_HUB = {"text_a": "premise", "text_b": "hypothesis", "label": "label", "index": "idx"}
NLI3 = ["entailment", "neutral", "contradiction"]


def _samples(train: list[Source], dev: list[Source], test: list[Source]) -> dict[str, list[Source]]:
    """train / dev with the shared JSON samples as fallbacks, test, and the samples as splits of their own."""
    return {"train": [*train, _S("train_9k_sample.json", _json_sample, SAMPLE)],
            "dev": [*dev, _S("dev_1k_sample_from_train.json", _json_sample, SAMPLE)], "test": test,
            "train_9k_sample": [_S("train_9k_sample.json", _json_sample, SAMPLE)],
            "dev_1k_sample": [_S("dev_1k_sample_from_train.json", _json_sample, SAMPLE)]}


def _glue_pair(a: str, b: str, label: str, samples: bool = True) -> dict[str, list[Source]]:
    """train/dev/test of a GLUE pair task with an ``index`` column (plus the shared samples when ``samples``)."""
    lay = f"{GLUE_TSV} with header: index {a} {b} {label}"
    train, dev = [_S("train.tsv", _tsv(a, b, label, "index"), lay)], [_S("dev.tsv", _tsv(a, b, label, "index"), lay)]
    test = [_S("test.tsv", _tsv(a, b, None, "index"), f"{GLUE_TSV} with header: index {a} {b}")]
    return _samples(train, dev, test) if samples else {"train": train, "dev": dev, "test": test}


def _nli_sources(dev: str, test: str, kshot_dev: str) -> dict[str, list[Source]]:
    """MNLI / SNLI in the GLUE layout: sentence1, sentence2, gold_label last (rows may carry label1..label5);
    rows whose gold label is ``-`` (no annotator majority) are dropped."""
    lay = f"{GLUE_TSV} with header: index ... sentence1 sentence2 label1 [label2..5] gold_label (last column)"
    p = _tsv("sentence1", "sentence2", -1, "index", skip_labels=("-",))
    tp = _tsv("sentence1", "sentence2", None, "index")
    return {**_samples([_S("train.tsv", p, lay)], [_S(dev, p, lay)],
                       [_S(test, tp, f"{GLUE_TSV} with header: index ... sentence1 sentence2")]),
            "kshot16_train": [_S("kshot16_train.tsv", p, lay)], "kshot16_dev": [_S(kshot_dev, p, lay)]}


def _single_sentence() -> list[Task]:
    cola_lay = "GLUE TSV without header: source, label, original-label, sentence"
    sst_lay = f"{GLUE_TSV} with header: sentence label"
    test = [_S("test.tsv", _tsv("sentence", None, None, "index"), f"{GLUE_TSV} with header: index sentence")]
    hub = {"text_a": "sentence", "label": "label", "index": "idx"}
    imdb: dict[str, list[Source]] = {split: [
        _S(f"plain_text/{split}-*.parquet", _imdb_table, "HF stanfordnlp/imdb parquet (text, label)"),
        _S(f"{split}-*.parquet", _imdb_table, "HF parquet (text, label)"),
        _S(f"data/{split}-*.parquet", _imdb_table, "HF parquet (text, label)"),
        _S(f"{split}.csv", _imdb_table, "CSV with header text,label"),
        _S((f"{split}/pos", f"{split}/neg"), _imdb_acl, f"aclImdb {split}/pos/*.txt and {split}/neg/*.txt"),
        _S((f"aclImdb/{split}/pos", f"aclImdb/{split}/neg"), _imdb_acl, "aclImdb folder"),
    ] for split in ("train", "test")}
    return [
        Task("cola", "classification", 2, ["unacceptable", "acceptable"], ["mcc", "accuracy"], ("nyu-mll/glue", "cola"),
             "glue/CoLA", {"train": [_S("train.tsv", _tsv(3, None, 1, header=False), cola_lay)],
                           "dev": [_S("dev.tsv", _tsv(3, None, 1, header=False), cola_lay)], "test": [*test]},
             hub_columns=hub, submission_digits=True),
        Task("sst2", "classification", 2, ["negative", "positive"], ["accuracy"], ("nyu-mll/glue", "sst2"),
             "glue/SST-2", {"train": [_S("train.tsv", _tsv("sentence", None, "label"), sst_lay)],
                            "dev": [_S("dev.tsv", _tsv("sentence", None, "label"), sst_lay)], "test": [*test]},
             hub_columns=hub, submission_digits=True),
        Task("imdb", "classification", 2, ["neg", "pos"], ["accuracy"], ("stanfordnlp/imdb", None), "imdb", imdb,
             dev_split=HELDOUT, heldout=2500, hub_columns={"text_a": "text", "label": "label"}),
    ]


def _similarity() -> list[Task]:
    mrpc_lay = f"{GLUE_TSV} with header (UTF-8 BOM): Quality, #1 ID, #2 ID, #1 String, #2 String"
    mp = _tsv("#1 String", "#2 String", "Quality")
    sts_lay = (f"{GLUE_TSV} with 10 columns: index genre filename year old_index source1 source2 sentence1 "
               f"sentence2 score")
    sp = _tsv("sentence1", "sentence2", "score", "index")
    qqp_lay = f"{GLUE_TSV} with header: id qid1 qid2 question1 question2 is_duplicate"
    qp = _tsv("question1", "question2", "is_duplicate", "id")
    qqp = {**_samples([_S("train.tsv", qp, qqp_lay)], [_S("dev.tsv", qp, qqp_lay)],
                      [_S("test.tsv", _tsv("question1", "question2", None, "id"),
                          f"{GLUE_TSV} with header: id question1 question2")]),
           "kshot16_train": [_S("kshot16_train.tsv", qp, qqp_lay)], "kshot16_dev": [_S("kshot16_dev.tsv", qp, qqp_lay)]}
    return [
        Task("mrpc", "similarity", 2, ["not_equivalent", "equivalent"], ["f1", "accuracy"], ("nyu-mll/glue", "mrpc"),
             "glue/MRPC", {"train": [_S("train.tsv", mp, mrpc_lay)], "dev": [_S("dev.tsv", mp, mrpc_lay)],
                           "test": [_S("test.tsv", _tsv("#1 String", "#2 String", None, "index"),
                                       f"{GLUE_TSV} with header: index, #1 ID, #2 ID, #1 String, #2 String")]},
             symmetric=True, hub_columns=PAIR_HUB, submission_digits=True),
        Task("stsb", "regression", 1, [], ["pearson", "spearman"], ("nyu-mll/glue", "stsb"), "glue/STS-B",
             {"train": [_S("train.tsv", sp, sts_lay)], "dev": [_S("dev.tsv", sp, sts_lay)],
              "test": [_S("test.tsv", _tsv("sentence1", "sentence2", None, "index"), sts_lay.replace(" score", ""))]},
             symmetric=True, hub_columns=PAIR_HUB),
        Task("qqp", "similarity", 2, ["not_duplicate", "duplicate"], ["f1", "accuracy"], ("nyu-mll/glue", "qqp"),
             "glue/QQP", qqp, symmetric=True, submission_digits=True,
             hub_columns={"text_a": "question1", "text_b": "question2", "label": "label", "index": "idx"}),
    ]


def _entailment() -> list[Task]:
    mnli = _nli_sources("dev_matched.tsv", "test_matched.tsv", "kshot16_dev_matched.tsv")
    p = _tsv("sentence1", "sentence2", -1, "index", skip_labels=("-",))
    lay = f"{GLUE_TSV} with header: index ... sentence1 sentence2 label1 .. gold_label"
    tp = _tsv("sentence1", "sentence2", None, "index")
    mnli.update({
        "dev_matched": [_S("dev_matched.tsv", p, lay)], "dev_mismatched": [_S("dev_mismatched.tsv", p, lay)],
        "test_matched": [_S("test_matched.tsv", tp, lay)], "test_mismatched": [_S("test_mismatched.tsv", tp, lay)],
    })
    sci_lay = "TSV without header: premise, hypothesis, entails|neutral (SciTail v1.1 tsv_format)"
    ent2 = ["entailment", "not_entailment"]
    return [
        Task("mnli", "entailment", 3, NLI3, ["accuracy"], ("nyu-mll/glue", "mnli"), "glue/MNLI", mnli,
             hub_columns=NLI_HUB),
        Task("snli", "entailment", 3, NLI3, ["accuracy"], ("stanfordnlp/snli", None), "glue/SNLI",
             _nli_sources("dev.tsv", "test.tsv", "kshot16_dev.tsv"), hub_columns=NLI_HUB, drop_unlabelled=True),
        Task("qnli", "entailment", 2, ent2, ["accuracy"], ("nyu-mll/glue", "qnli"), "glue/QNLI",
             _glue_pair("question", "sentence", "label"),
             hub_columns={"text_a": "question", "text_b": "sentence", "label": "label", "index": "idx"}),
        Task("rte", "entailment", 2, ent2, ["accuracy"], ("nyu-mll/glue", "rte"), "glue/RTE",
             _glue_pair("sentence1", "sentence2", "label", samples=False), hub_columns=PAIR_HUB),
        Task("wnli", "entailment", 2, ["not_entailment", "entailment"], ["accuracy"], ("nyu-mll/glue", "wnli"),
             "glue/WNLI", _glue_pair("sentence1", "sentence2", "label", samples=False), hub_columns=PAIR_HUB,
             submission_digits=True),
        Task("scitail", "entailment", 2, ["entails", "neutral"], ["accuracy"], ("allenai/scitail", "tsv_format"),
             "scitail", {s: [_S(f"scitail_1.0_{s}.tsv", _tsv(0, 1, 2, header=False), sci_lay)]
                         for s in ("train", "dev", "test")},
             hub_columns={"text_a": "premise", "text_b": "hypothesis", "label": "label"}),
    ]


def _multiple_choice() -> list[Task]:
    race_lay = 'JSON lines {"article", "questions", "options", "answers", "id"}'
    splits = ("train", "dev", "test")
    race = {**{s: [_S(tuple(f"{s}-{lv}.jsonl" for lv in RACE_LEVELS), _race, race_lay)] for s in splits},
            **{f"{s}_{lv}": [_S(f"{s}-{lv}.jsonl", _race, race_lay)] for s in splits for lv in RACE_LEVELS}}
    sc_lay = "CSV with header InputStoryid, InputSentence1..4, RandomFifthSentenceQuiz1/2, AnswerRightEnding"

    def sc(s: str) -> list[Source]:
        return [_S(f"{s}.csv", _story_cloze, sc_lay),
                _S(f"cloze_test_{s}__spring2016 - cloze_test_ALL_{s}.csv", _story_cloze, sc_lay)]

    return [
        Task("race", "multiple_choice", 4, ["A", "B", "C", "D"], ["accuracy"], ("ehovy/race", "all"), "race", race,
             accuracy_by=("level", RACE_LEVELS),
             hub_columns={"text_a": "article", "text_b": "question", "choices": "options", "label": "answer",
                          "index": "example_id"}),
        Task("story_cloze", "multiple_choice", 2, ["ending1", "ending2"], ["accuracy"], ("LSDSem/story_cloze", "2016"),
             "story_cloze", {"train": sc("val"), "val": sc("val"), "test": sc("test")},
             dev_split=HELDOUT, heldout=374,  # GPT-1's code: 1497 val stories train, 374 select, test.csv reports
             hub_columns={"text_a": [f"input_sentence_{i}" for i in range(1, 5)],
                          "choices": ["sentence_quiz1", "sentence_quiz2"], "label": "answer_right_ending",
                          "index": "story_id"}, hub_label_offset=-1),
    ]


TASKS: dict[str, Task] = {t.name: t for t in (*_single_sentence(), *_similarity(), *_entailment(),
                                             *_multiple_choice(), custom_task())}
"""The GPT-1 tasks (plus imdb and a default ``custom``) by name."""


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise TaskDataError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def task_for(name: str, data_dir: str | Path, **custom: Any) -> tuple[Task, Path]:
    """(task, folder its files are in). ``custom`` holds ``custom_task`` keyword arguments, which only task
    ``custom`` takes; its ``data_dir`` may be a single file, read for every split (fine-tuning then selects
    epochs on a held-out part of it). A custom task comes back with its kind and labels read from its files
    (``Task.with_labels``): a new Task each call, TASKS["custom"] never changes."""
    if name != "custom":
        if custom:
            raise TaskDataError(f"task {name!r} takes no column options ({sorted(custom)}); those are for 'custom'")
        return get_task(name), Path(data_dir)
    task, folder = custom_task(**custom), Path(data_dir)
    if folder.is_file():
        first = task.sources["train"][0]
        task = dataclasses.replace(task, sources={s: [Source((folder.name,), first.parse, first.layout)]
                                                  for s in task.sources}, dev_split=HELDOUT)
        folder = folder.parent
    return task.with_labels(folder), folder


def load_task(name: str, data_dir: str | Path, split: str, **custom: Any) -> list[Example]:
    """Examples of ``split`` of task ``name``; ``custom`` keyword arguments go to ``custom_task`` (see task_for)."""
    task, folder = task_for(name, data_dir, **custom)
    return task.load(folder, split)
