"""gptscale.tasks.metrics against scikit-learn and scipy on many random inputs and the edge cases; compute_metrics:
per-value accuracy (Task.accuracy_by)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import sklearn.metrics as sk  # test-only dependency: the dev extra
from scipy import stats

from gptscale.tasks import TASKS, Example, compute_metrics
from gptscale.tasks import metrics as M

# sklearn warns about single-class inputs; those are exactly the edge cases we check
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _same(a: float, b: float, tol: float = 1e-9) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


def _scipy(fn, x, y) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(x, y)[0])


def test_classification_metrics_match_sklearn_on_random_inputs():
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 60))
        k = int(rng.integers(2, 5)) if trial % 3 else 2
        y = rng.integers(0, k, n)
        p = np.where(rng.random(n) < rng.random(), y, rng.integers(0, k, n))
        assert _same(M.accuracy(p, y), sk.accuracy_score(y, p))
        assert _same(M.matthews_corrcoef(p, y), sk.matthews_corrcoef(y, p)), (p, y)
        if k == 2:
            assert _same(M.f1(p, y), sk.f1_score(y, p, zero_division=0.0)), (p, y)


@pytest.mark.parametrize("p,y", [
    ([1, 1, 1, 1], [1, 1, 1, 1]),    # all one class, all right
    ([0, 0, 0, 0], [1, 0, 1, 0]),    # constant predictions
    ([1, 0, 1, 0], [1, 1, 1, 1]),    # constant labels
    ([0, 0, 0], [0, 0, 0]),          # no positives anywhere: F1 0 (sklearn zero_division)
    ([1], [0]),
    ([0, 1], [1, 0]),                # perfectly wrong: MCC -1
    ([2, 2, 0], [1, 1, 1]),          # predicted class absent from labels
])
def test_classification_edge_cases_match_sklearn(p, y):
    assert _same(M.accuracy(p, y), sk.accuracy_score(y, p))
    assert _same(M.matthews_corrcoef(p, y), sk.matthews_corrcoef(y, p))
    if set(p) | set(y) <= {0, 1}:
        assert _same(M.f1(p, y), sk.f1_score(y, p, zero_division=0.0))


def test_mcc_is_zero_when_all_one_class():
    assert M.matthews_corrcoef([1] * 5, [1] * 5) == 0.0
    assert M.matthews_corrcoef([0] * 5, [1, 0, 1, 0, 1]) == 0.0
    assert M.matthews_corrcoef([], []) == 0.0


def test_correlations_match_scipy_on_random_inputs():
    rng = np.random.default_rng(1)
    for trial in range(300):
        n = int(rng.integers(2, 80))
        if trial % 3 == 0:  # many ties, like STS-B's 0.2-step scores
            y = rng.integers(0, 6, n).astype(float)
            p = np.round(y + rng.normal(0, 1.5, n))
        else:
            y = rng.uniform(0, 5, n)
            p = y * rng.normal() + rng.normal(0, 2, n)
        assert _same(M.pearson(p, y), _scipy(stats.pearsonr, p, y), 1e-9), (p, y)
        assert _same(M.spearman(p, y), _scipy(stats.spearmanr, p, y), 1e-9), (p, y)
        np.testing.assert_allclose(M.rankdata(p), stats.rankdata(p, method="average"))


def test_correlation_edge_cases():
    # constant input: nan, as scipy (documented choice: not 0)
    assert math.isnan(M.pearson([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]))
    assert math.isnan(_scipy(stats.pearsonr, [1.0, 1.0, 1.0], [0.0, 1.0, 2.0]))
    assert math.isnan(M.spearman([2, 2, 2], [3, 1, 2]))
    assert math.isnan(M.pearson([1.0], [2.0]))
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert M.pearson([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0)
    assert M.spearman([1, 2, 2, 3], [1, 5, 5, 100]) == pytest.approx(1.0)
    # large offsets do not lose precision
    x = np.arange(10.0)
    assert M.pearson(x + 1e9, x * 3) == pytest.approx(1.0)
    np.testing.assert_allclose(M.rankdata([3, 1, 3, 2, 3]), [4, 1, 4, 2, 4])


def test_compute_and_registry():
    out = M.compute(["f1", "accuracy"], [1, 0, 1, 1], [1, 0, 0, 1])
    assert list(out) == ["f1", "accuracy"]
    assert out["accuracy"] == 0.75 and out["f1"] == pytest.approx(0.8)
    assert M.METRICS["mcc"] is M.matthews_corrcoef
    for name, fn in M.METRICS.items():
        assert callable(fn), name
    with pytest.raises(ValueError, match="unknown metric"):
        M.compute(["bleu"], [1], [1])
    with pytest.raises(ValueError, match="same length"):
        M.accuracy([1, 0], [1])


def test_accuracy_by_adds_accuracy_per_meta_value():
    exs = [Example("a", label=1, meta={"genre": g}) for g in ("news", "news", "fiction")]
    by_genre = dataclasses.replace(TASKS["sst2"], accuracy_by=("genre", ("news", "fiction", "poetry")))
    assert compute_metrics(by_genre, [1, 0, 1], exs) == {"accuracy": pytest.approx(2 / 3), "accuracy_news": 0.5,
                                                          "accuracy_fiction": 1.0}  # no poetry examples: no key
    assert list(compute_metrics(TASKS["sst2"], [1, 0, 1], exs)) == ["accuracy"]
    with pytest.raises(ValueError, match="some examples have no label"):
        compute_metrics(TASKS["sst2"], [1], [Example("test row")])
