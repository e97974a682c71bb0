"""The diagnostic properties of Atanasova et al. (2020), "A Diagnostic Study of Explainability Techniques
for Text Classification" (code: copenlu/xai-benchmark), for doc-level classifiers.

- confidence indication: can the explanation predict the model's confidence? Features from the gap
  between the predicted label's token scores and the other labels' (max, mean, min over the other labels),
  MinMax-scaled, a linear regression onto p(ŷ|x), 5 shuffle splits (90/10, seed 2, training set
  up-sampled over confidence buckets of width 0.1): mean absolute error and max error (lower = better).
  Needs every label explained (``labels = "all"``).
- rationale consistency: do two models of the same architecture (e.g. two seeds) that behave alike
  explain alike? Per doc, the activation distance (mean over layers of |mean(act₁) − mean(act₂)|) and the
  explanation distance (mean |s₁ − s₂| over the labels both explain), MinMax-scaled; Spearman's ρ between
  them over the docs (higher = better).
- dataset consistency: do similar docs get similar explanations? Pairs of docs (same label with the most
  shared non-stop words, and different labels with the fewest); per pair, the activation distance and the
  explanation distance over the pair's vocabulary (a word's mean score, 1e-7 where absent); Spearman's ρ.
- human agreement (the AUPRC of `plausibility`) and time (the runner measures seconds per doc) complete
  the properties.

A ρ over distances that are all equal (a model against itself) is undefined and reported as None.
"""

import random
from typing import Dict, List, Optional, Sequence, Tuple

import numpy
from spacy.tokens import Doc

from ..attribution import Attribution
from .statistics import Estimate, bootstrap, min_max, spearman


def _label_scores(doc: Doc, method: str) -> Dict[str, Attribution]:
    return doc._.attributions.get(method, {})


# -- confidence indication ------------------------------------------------------------------------
def confidence_features(doc: Doc, method: str) -> Optional[Tuple[numpy.ndarray, float]]:
    """(max, mean, min) of Σ s_ŷ − Σ s_c over the other labels c, and p(ŷ|x), from the doc's predicted
    cats; None where the doc lacks the explanation of some label."""
    by_label = _label_scores(doc, method)
    if not doc.cats or any(label not in by_label for label in doc.cats):
        return None
    predicted = max(doc.cats, key=doc.cats.get)
    total = {label: float(a.scores.sum()) for label, a in by_label.items()}
    gaps = numpy.array([total[predicted] - total[c] for c in doc.cats if c != predicted])
    if not len(gaps):
        return None
    return numpy.array([gaps.max(), gaps.mean(), gaps.min()]), float(doc.cats[predicted])


def _confidence_errors(rows: numpy.ndarray, n_splits: int = 5, seed: int = 2) -> numpy.ndarray:
    """Mean absolute and max error of the regression, averaged over shuffle splits. `rows`: features then
    confidence."""
    features, confidence = rows[:, :-1], rows[:, -1]
    span = features.max(0) - features.min(0)
    features = (features - features.min(0)) / numpy.where(span == 0, 1, span)
    rng = numpy.random.default_rng(seed)
    n = len(rows)
    n_test = max(1, int(round(0.1 * n)))
    errors = []
    for _ in range(n_splits):
        order = rng.permutation(n)
        test, train = order[:n_test], order[n_test:]
        train = _upsample(train, confidence, rng)
        design = numpy.c_[features[train], numpy.ones(len(train))]
        weights, *_ = numpy.linalg.lstsq(design, confidence[train], rcond=None)
        predicted = numpy.c_[features[test], numpy.ones(len(test))] @ weights
        residual = numpy.abs(predicted - confidence[test])
        errors.append([residual.mean(), residual.max()])
    return numpy.mean(errors, 0)


def _upsample(train: numpy.ndarray, confidence: numpy.ndarray, rng) -> numpy.ndarray:
    """Each confidence bucket (width 0.1) of the training set resampled to the size of the largest."""
    buckets: Dict[int, List[int]] = {}
    for i in train:
        buckets.setdefault(min(int(confidence[i] * 10), 9), []).append(int(i))
    size = max(len(b) for b in buckets.values())
    return numpy.concatenate([rng.choice(b, size, replace=True) for b in buckets.values()])


def confidence_indication(docs: Sequence[Doc], method: str, *, n_resamples: int = 200,
                          seed: int = 0) -> Optional[Dict[str, Estimate]]:
    """``ci_mae`` and ``ci_max_error`` over the docs with every label explained; None with fewer than 10."""
    rows = [numpy.r_[f[0], f[1]] for f in (confidence_features(doc, method) for doc in docs) if f is not None]
    if len(rows) < 10:
        return None
    table = numpy.array(rows)
    return {name: bootstrap(table, lambda r, i=i: float(_confidence_errors(r)[i]), n_resamples=n_resamples, seed=seed)
            for i, name in enumerate(("ci_mae", "ci_max_error"))}


# -- consistency ----------------------------------------------------------------------------------
def _rho(activation: numpy.ndarray, explanation: numpy.ndarray, n_resamples: int, seed: int) -> Estimate:
    """Spearman's ρ of the MinMax-scaled distances, with its bootstrap interval over the rows."""
    def statistic(rows: numpy.ndarray) -> float:
        rho = spearman(min_max(rows[:, 0]), min_max(rows[:, 1]))
        return numpy.nan if rho is None else rho

    table = numpy.c_[activation, explanation]
    value = spearman(min_max(activation), min_max(explanation)) if len(table) else None
    if value is None:
        return Estimate(None, None, None, len(table))
    interval = bootstrap(table, statistic, n_resamples=n_resamples, seed=seed)
    return Estimate(value, interval.low, interval.high, len(table))


def rationale_consistency(docs_a: Sequence[Doc], docs_b: Sequence[Doc], activations_a: numpy.ndarray,
                          activations_b: numpy.ndarray, method: str, *, n_resamples: int = 1000,
                          seed: int = 0) -> Estimate:
    """Spearman's ρ between activation and explanation distances of two models on the same docs."""
    activation, explanation = [], []
    for doc_a, doc_b, act_a, act_b in zip(docs_a, docs_b, activations_a, activations_b):
        a, b = _label_scores(doc_a, method), _label_scores(doc_b, method)
        shared = [label for label in a if label in b]
        if not shared:
            continue
        activation.append(float(numpy.abs(act_a - act_b).mean()))
        explanation.append(float(numpy.mean([numpy.abs(a[l].scores - b[l].scores).mean() for l in shared])))
    return _rho(numpy.array(activation), numpy.array(explanation), n_resamples, seed)


def _word_scores(doc: Doc, attribution: Attribution) -> Dict[str, float]:
    by_word: Dict[str, List[float]] = {}
    for token, score in zip(doc, attribution.scores):
        by_word.setdefault(token.lower_, []).append(float(score))
    return {word: float(numpy.mean(values)) for word, values in by_word.items()}


def similar_pairs(docs: Sequence[Doc], labels: Sequence[str], n_pairs: int, seed: int = 73) -> List[Tuple[int, int]]:
    """Up to `n_pairs` same-label pairs with the most shared non-stop, non-punctuation words, and as many
    different-label pairs drawn at random from the least-overlapping ones."""
    words = [{t.lower_ for t in doc if not (t.is_stop or t.is_punct or t.is_space)} for doc in docs]
    same, different = [], []
    for i in range(len(docs)):
        for j in range(i + 1, len(docs)):
            (same if labels[i] == labels[j] else different).append((len(words[i] & words[j]), i, j))
    same.sort(key=lambda x: (-x[0], x[1], x[2]))
    different.sort(key=lambda x: (x[0], x[1], x[2]))
    least = different[:max(n_pairs, min(len(different), 5 * n_pairs // 2))]
    chosen = random.Random(seed).sample(least, min(n_pairs, len(least)))
    return [(i, j) for _, i, j in same[:n_pairs]] + [(i, j) for _, i, j in chosen]


def dataset_consistency(docs: Sequence[Doc], activations: numpy.ndarray, method: str,
                        pairs: Sequence[Tuple[int, int]], *, n_resamples: int = 1000, seed: int = 0) -> Estimate:
    """Spearman's ρ between activation and explanation distances over pairs of docs of one model."""
    activation, explanation = [], []
    for i, j in pairs:
        a, b = explained_label(docs[i], method), explained_label(docs[j], method)
        if a is None or b is None:
            continue
        words_a, words_b = _word_scores(docs[i], a), _word_scores(docs[j], b)
        vocabulary = sorted(set(words_a) | set(words_b))
        explanation.append(float(numpy.mean([abs(words_a.get(w, 1e-7) - words_b.get(w, 1e-7)) for w in vocabulary])))
        activation.append(float(numpy.abs(activations[i] - activations[j]).mean()))
    return _rho(numpy.array(activation), numpy.array(explanation), n_resamples, seed)


def explained_label(doc: Doc, method: str) -> Optional[Attribution]:
    """The doc's explanation of its predicted label (the highest of ``doc.cats``), else its first one."""
    by_label = _label_scores(doc, method)
    if not by_label:
        return None
    predicted = max(doc.cats, key=doc.cats.get) if doc.cats else None
    return by_label.get(predicted, next(iter(by_label.values())))
