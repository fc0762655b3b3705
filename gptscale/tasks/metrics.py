"""Evaluation metrics of the GPT-1 tasks: pure numpy functions, checked against scikit-learn / scipy.

    compute(["f1", "accuracy"], preds, labels)      # {"f1": 0.84, "accuracy": 0.79}

Conventions (identical to scikit-learn / scipy on every input, edge cases included):

- ``accuracy``: fraction of exact matches; an empty input gives nan.
- ``f1``: binary F1 of the positive class 1 (GLUE MRPC/QQP). With no true and no predicted positives the
  score is 0.0 (scikit-learn's ``zero_division`` default, without its warning).
- ``matthews_corrcoef`` (``mcc``): the multi-class form (Gorodkin 2004) that scikit-learn computes; 0.0
  when it is undefined (all labels or all predictions one class), as scikit-learn returns.
- ``pearson``: nan when either input is constant (zero variance) or has fewer than 2 values, as scipy
  returns (we do not turn it into 0: a constant prediction is a broken model, not a zero correlation).
- ``spearman``: Pearson correlation of the average ranks (ties share the mean of their ranks, scipy's
  ``rankdata(method="average")``); nan under the same conditions as ``pearson``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _pair(preds: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(preds), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"preds and labels must be 1-D and of the same length, got shapes {p.shape} and {y.shape}")
    return p, y


def accuracy(preds: Any, labels: Any) -> float:
    """Fraction of predictions equal to the label (nan for empty inputs)."""
    p, y = _pair(preds, labels)
    return float(np.mean(p == y)) if len(p) else float("nan")


def f1(preds: Any, labels: Any) -> float:
    """Binary F1 of the positive class 1: 2TP / (2TP + FP + FN); 0.0 when there is no positive at all."""
    p, y = _pair(preds, labels)
    tp = int(np.sum((p == 1) & (y == 1)))
    fp = int(np.sum((p == 1) & (y != 1)))
    fn = int(np.sum((p != 1) & (y == 1)))
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def matthews_corrcoef(preds: Any, labels: Any) -> float:
    """Matthews correlation coefficient (multi-class form); 0.0 where undefined, as scikit-learn."""
    p, y = _pair(preds, labels)
    if not len(p):
        return 0.0
    classes, inv = np.unique(np.concatenate([y, p]), return_inverse=True)
    k, n = len(classes), len(p)
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (inv[:n], inv[n:]), 1.0)  # rows: true class, columns: predicted class
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    correct, total = np.trace(cm), cm.sum()
    cov_ytyp = correct * total - np.dot(t_sum, p_sum)
    cov_ypyp = total**2 - np.dot(p_sum, p_sum)
    cov_ytyt = total**2 - np.dot(t_sum, t_sum)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


def pearson(preds: Any, labels: Any) -> float:
    """Pearson correlation; nan for constant inputs or fewer than 2 values (as scipy)."""
    p, y = _pair(preds, labels)
    if len(p) < 2:
        return float("nan")
    p, y = p.astype(np.float64), y.astype(np.float64)
    dp, dy = p - p.mean(), y - y.mean()
    # scipy normalises each centred vector first (no overflow / underflow on extreme scales)
    np_, ny = np.linalg.norm(dp), np.linalg.norm(dy)
    if np_ == 0 or ny == 0 or not np.isfinite(np_ * ny):
        return float("nan")
    r = float(np.dot(dp / np_, dy / ny))
    return max(-1.0, min(1.0, r))


def rankdata(x: Any) -> np.ndarray:
    """Ranks 1..n of ``x``; tied values get the average of the ranks they span (scipy ``method="average"``)."""
    a = np.asarray(x)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # start of each run of equal values in sorted order
    new_run = np.concatenate([[True], sorted_a[1:] != sorted_a[:-1]]) if len(a) else np.zeros(0, bool)
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.concatenate([starts[1:], [len(a)]])
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = avg[run_id]
    return ranks


def spearman(preds: Any, labels: Any) -> float:
    """Spearman rank correlation with average ranks for ties; nan for constant inputs (as scipy)."""
    p, y = _pair(preds, labels)
    return pearson(rankdata(p), rankdata(y))


METRICS: dict[str, Callable[[Any, Any], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": matthews_corrcoef,
    "matthews_corrcoef": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}
"""Metric functions by name (``mcc`` and ``matthews_corrcoef`` are the same function)."""


def compute(task_metric_names: Sequence[str], preds: Any, labels: Any) -> dict[str, float]:
    """``{name: METRICS[name](preds, labels)}`` for each name, in the given order (primary first)."""
    unknown = [m for m in task_metric_names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    return {name: METRICS[name](preds, labels) for name in task_metric_names}
