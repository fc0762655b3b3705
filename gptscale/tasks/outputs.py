"""What a fine-tuning run writes besides its model folder: metrics.json, predictions, GLUE submissions.

    RUN_DIR/metrics.json               every epoch's dev metrics (primary first), the best epoch, other splits
    RUN_DIR/predictions_dev.tsv        index, prediction, confidence, label of the best epoch
    RUN_DIR/submission/<TASK>.tsv      index<TAB>prediction for each unlabelled test split (GLUE server format)

Every file is written atomically; `read_best` is what the few-shot sweep and the launcher's grid read back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptscale.files import atomic_write_bytes, atomic_write_json
from gptscale.tasks.base import Example, Task, TaskDataError

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions_dev.tsv"
SUBMISSION_DIR = "submission"

EXTRA_SPLITS = ("dev_matched", "dev_mismatched", "test", "test_matched", "test_mismatched")
"""Splits scored at each best epoch besides dev: labelled ones get metrics, unlabelled ones a submission."""
SUBMISSION_SUFFIX = {"test": "", "test_matched": "-m", "test_mismatched": "-mm"}


def extra_splits(task: Task, data_dir: str | Path, used: tuple[str, str]) -> dict[str, list[Example]]:
    """The EXTRA_SPLITS present locally that are not the files training or epoch selection read, loaded."""
    if not task.sources:
        return {}
    used_files = [task.resolve(data_dir, s)[0] for s in used if s in task.sources]
    out = {}
    for split in (s for s in EXTRA_SPLITS if s in task.sources):
        try:
            files = task.resolve(data_dir, split)[0]
        except TaskDataError:
            continue  # not here
        if files not in used_files:
            out[split] = task.load(data_dir, split)
    return out


def label_text(task: Task, value: Any, digits: bool = False) -> str:
    """A prediction or label as text: 3 decimals for regression, else the label name (or its id)."""
    if task.kind == "regression":
        return f"{float(value):.3f}"
    if digits or not task.label_names:
        return str(int(value))
    return task.label_names[int(value)]


def submission_path(run_dir: Path, task: Task, split: str) -> Path:
    """RUN_DIR/submission/<GLUE name><suffix>.tsv (RTE.tsv, MNLI-m.tsv, ...)."""
    from_files = task.labels_from_files is not None  # custom: its folder may be a datasets cache directory
    name = Path(task.folder).name if task.folder not in ("", ".") and not from_files else task.name
    return run_dir / SUBMISSION_DIR / f"{name}{SUBMISSION_SUFFIX.get(split, '-' + split)}.tsv"


def write_submission(path: Path, task: Task, examples: list[Example], preds: list) -> None:
    """index<TAB>prediction, as the GLUE server reads it: label names (entailment, ...) for the NLI tasks,
    0/1 for those whose GLUE files use digits (``Task.submission_digits``: CoLA, SST-2, MRPC, QQP, WNLI),
    3 decimals for STS-B."""
    rows = ["index\tprediction"] + [
        f"{ex.meta.get('index', i)}\t{label_text(task, p, task.submission_digits)}"
        for i, (ex, p) in enumerate(zip(examples, preds))]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, ("\n".join(rows) + "\n").encode())


def write_predictions(path: Path, task: Task, examples: list[Example], preds: list, confs: list) -> None:
    """index<TAB>prediction<TAB>confidence<TAB>label (label names; regression values), one row per example."""
    rows = ["index\tprediction\tconfidence\tlabel"] + [
        f"{ex.meta.get('index', i)}\t{label_text(task, p)}\t{c:.6f}\t"
        f"{'' if ex.label is None else label_text(task, ex.label)}"
        for i, (ex, p, c) in enumerate(zip(examples, preds, confs))]
    atomic_write_bytes(path, ("\n".join(rows) + "\n").encode())


def write_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """RUN_DIR/metrics.json, keys in the given order (the primary metric first)."""
    atomic_write_json(run_dir / METRICS_FILE, record, sort_keys=False)


def read_best(run_dir: str | Path) -> dict[str, Any] | None:
    """The best epoch of a fine-tuning run (RUN_DIR/metrics.json): metric, value, best_epoch and every metric;
    None while the run has not written one."""
    f = Path(run_dir) / METRICS_FILE
    if not f.is_file():
        return None
    m = json.loads(f.read_text())
    best = {k: v for k, v in m["best"].items() if k != "epoch"}
    return {"task": m["task"], "metric": m["primary"], "value": best.get(m["primary"]),
            "best_epoch": m["best"].get("epoch"), **best}
