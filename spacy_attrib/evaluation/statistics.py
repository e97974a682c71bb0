"""Small statistics the evaluation needs, in numpy (no scipy or scikit-learn dependency).

Each is checked against hand-computed values in ``tests/test_evaluation_metrics.py``.
"""

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy


@dataclass(frozen=True)
class Estimate:
    """A statistic over n instances with its 95 % percentile-bootstrap interval (None where n < 2). A value
    of None is a statistic that is undefined on these instances (Spearman's ρ of constant distances)."""

    value: Optional[float]
    low: Optional[float]
    high: Optional[float]
    n: int


def bootstrap(values: Sequence, statistic: Callable[[numpy.ndarray], float] = numpy.mean, *,
              n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """`statistic` of `values` and its percentile-bootstrap interval: resample the instances (rows of
    `values`) with replacement `n_resamples` times and take the central `confidence` share of the
    statistic's values. `statistic` may be any function of the rows (a mean, a dataset-level F1 AUC);
    resamples where it is undefined (NaN) are left out."""
    values = numpy.asarray(values)
    n = len(values)
    if n == 0:
        raise ValueError("bootstrap needs at least one value")
    value = float(statistic(values))
    if n < 2:
        return Estimate(value, None, None, n)
    rng = numpy.random.default_rng(seed)
    resampled = numpy.array([float(statistic(values[rng.integers(0, n, n)])) for _ in range(n_resamples)])
    resampled = resampled[numpy.isfinite(resampled)]
    if not len(resampled):
        return Estimate(value, None, None, n)
    tail = (1 - confidence) / 2 * 100
    low, high = numpy.percentile(resampled, [tail, 100 - tail])
    return Estimate(value, float(low), float(high), n)


def average_precision(relevant: Sequence[bool], scores: Sequence[float]) -> float:
    """Average precision of ranking by `scores` (descending) against the binary `relevant`: the mean,
    over the relevant items, of the precision at each one's rank (scikit-learn's
    ``average_precision_score``, which is the step-wise area under the precision-recall curve; tied
    scores form one threshold). NaN where nothing is relevant."""
    relevant = numpy.asarray(relevant, dtype=bool)
    scores = numpy.asarray(scores, dtype="float64")
    if not relevant.any():
        return float("nan")
    thresholds = numpy.unique(scores)[::-1]
    precision_sum, previous_recall = 0.0, 0.0
    for threshold in thresholds:
        selected = scores >= threshold
        hits = (relevant & selected).sum()
        recall = hits / relevant.sum()
        precision_sum += (recall - previous_recall) * hits / selected.sum()
        previous_recall = recall
    return float(precision_sum)


def ranks(values: Sequence[float]) -> numpy.ndarray:
    """1-based ranks, ties given their mean rank (as Spearman's ρ needs)."""
    values = numpy.asarray(values, dtype="float64")
    order = numpy.argsort(values, kind="stable")
    result = numpy.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        result[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation; None where either side is constant (ρ is undefined there, and a NaN
    would pass silently into a table)."""
    rx, ry = ranks(x), ranks(y)
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return None
    return float(numpy.corrcoef(rx, ry)[0, 1])


def min_max(values: Sequence[float]) -> numpy.ndarray:
    """Scaled to [0, 1]; all zeros where the values are constant."""
    values = numpy.asarray(values, dtype="float64")
    spread = values.max() - values.min() if len(values) else 0.0
    return (values - values.min()) / spread if spread else numpy.zeros_like(values)


def macro_f1(gold: Sequence[int], predicted: Sequence[int], n_classes: int) -> float:
    """Unweighted mean over the classes present in `gold` or `predicted` of each class's F1."""
    gold, predicted = numpy.asarray(gold), numpy.asarray(predicted)
    scores = []
    for c in range(n_classes):
        tp = int(((gold == c) & (predicted == c)).sum())
        fp = int(((gold != c) & (predicted == c)).sum())
        fn = int(((gold == c) & (predicted != c)).sum())
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(numpy.mean(scores)) if scores else 0.0


def trapezoid(y: Sequence[float], x: Sequence[float]) -> float:
    """The area under y(x) by the trapezoidal rule (scikit-learn's ``auc``)."""
    y, x = numpy.asarray(y, dtype="float64"), numpy.asarray(x, dtype="float64")
    return float(((y[1:] + y[:-1]) / 2 * numpy.diff(x)).sum())
