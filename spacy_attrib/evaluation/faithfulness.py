"""Faithfulness: comprehensiveness, sufficiency (AOPC), degradation curves and Atanasova's F1 AUC.

`select(protocol, cases, decide)` keeps the cases the protocol's filters ask for; `removals(protocol, case)`
lists the token sets a protocol removes from a case's doc; the runner scores them all at once (`Rescorer`),
and `measure(protocol, cases, scores)` turns the scores into estimates. See `protocols` for the
definitions.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy

from ..attribution import Attribution
from .protocols import Protocol
from ..removal import Score
from .statistics import Estimate, bootstrap, macro_f1, trapezoid

Selection = Optional[Tuple[int, ...]]  # removed tokens; None where a bin is left out (skip_repeats)


@dataclass
class Case:
    """One explained target on one doc: the unit every metric averages over.

    d: the doc's index; method: the method's key; attribution: its result; removable: the tokens a
    protocol may remove (`removal.removable_tokens`); reference: the label decision perturbed inputs are
    judged against (the gold class index, or the gold membership 0/1 for non-exclusive heads; the clean
    prediction where there is no gold), None where the head has no decision (ner); gold: whether
    `reference` is gold.
    """

    d: int
    method: str
    attribution: Attribution
    removable: numpy.ndarray
    reference: Optional[int] = None
    gold: bool = False


@dataclass
class MetricResult:
    """One row of a results table. `curve`: per-point values where the metric has them (the x values under
    the protocol's `axis`, ``fraction`` or ``k``; ``mean`` and its interval, ``accuracy``, ``macro_f1``)."""

    protocol: str
    method: str
    metric: str
    estimate: Estimate
    curve: Optional[Dict[str, List]] = None

    def to_dict(self) -> Dict[str, Any]:
        """Plain data for JSON; NaN (a bin no case kept) becomes None."""
        e = self.estimate
        curve = {name: [_finite(v) for v in values] for name, values in self.curve.items()} if self.curve else None
        return {"protocol": self.protocol, "method": self.method, "metric": self.metric, "value": _finite(e.value),
                "ci_low": _finite(e.low), "ci_high": _finite(e.high), "n": e.n, **({"curve": curve} if curve else {})}


def _finite(value: Optional[float]) -> Optional[float]:
    return None if value is None or not numpy.isfinite(value) else float(value)


def ranking(case: Case, protocol: Protocol, most_relevant_first: bool = True) -> numpy.ndarray:
    """The case's removable tokens, most relevant (highest score) first, or least relevant first; ties keep
    document order. With `positive_only`, only positively scored tokens (most relevant first only)."""
    scores = case.attribution.scores[case.removable]
    order = numpy.argsort(-scores if most_relevant_first else scores, kind="stable")
    ranked = case.removable[order]
    if protocol.positive_only and most_relevant_first:
        ranked = ranked[case.attribution.scores[ranked] > 0]
    return ranked


def select(protocol: Protocol, cases: List[Case], decide: Callable[[List[Case]], Sequence[int]]) -> List[Case]:
    """The cases the protocol's filters keep: those with at least `min_tokens` removable tokens and, with
    `correct_only`, those whose clean decision (`decide`, asked once for all of them) equals their gold
    reference. Cases without a gold reference cannot be judged: `correct_only` raises for them rather than
    measure predictions against themselves."""
    kept = [case for case in cases if len(case.removable) >= protocol.min_tokens]
    if not protocol.correct_only or not kept:
        return kept
    unjudged = [case for case in kept if not case.gold]
    if unjudged:
        raise ValueError(f"Protocol {protocol.name!r} keeps only targets the model gets right against gold "
                         f"(correct_only), but {len(unjudged)} of {len(kept)} cases of {unjudged[0].method!r} have "
                         "no gold decision: docs given already explained carry predictions, not gold (pass the "
                         "gold docs or Examples instead), and entity and span targets have no decision")
    return [case for case, decision in zip(kept, decide(kept)) if decision == case.reference]


def removals(protocol: Protocol, case: Case) -> Dict[str, List[Selection]]:
    """Per kind of selection, the removed tokens at each point: ``top`` (the k most relevant: for
    comprehensiveness, MoRF, F1 AUC), ``keep`` (all but the k most relevant: sufficiency) and ``bottom``
    (the k least relevant: LeRF)."""
    n = len(case.removable)
    top = ranking(case, protocol)
    bottom = ranking(case, protocol, most_relevant_first=False)
    result: Dict[str, List[Selection]] = {"top": [], "keep": [], "bottom": []}
    previous = None
    for point in protocol.points:
        k = protocol.k(point, n)
        chosen = top[:k]
        if protocol.skip_repeats and (not len(chosen) or (previous is not None and set(chosen) == previous)):
            result["top"].append(None)
            result["keep"].append(None)
        else:
            result["top"].append(tuple(sorted(int(t) for t in chosen)))
            result["keep"].append(tuple(sorted(int(t) for t in set(case.removable.tolist()) - set(chosen.tolist()))))
        previous = set(chosen)
        result["bottom"].append(tuple(sorted(int(t) for t in bottom[:k])))
    return result


def needed(protocol: Protocol) -> Tuple[str, ...]:
    """The selection kinds the protocol's measures read."""
    kinds = set()
    for m in protocol.measures:
        kinds |= {"comprehensiveness": {"top"}, "sufficiency": {"keep"}, "degradation": {"top", "bottom"},
                  "f1_auc": {"top"}}[m]
    return tuple(sorted(kinds))


ScoreOf = Callable[[Case, Tuple[int, ...]], Score]


def measure(protocol: Protocol, method: str, cases: List[Case], score_of: ScoreOf, *, n_resamples: int = 1000,
            seed: int = 0) -> List[MetricResult]:
    """The protocol's measures over `cases` (one method's), given each removal's score."""
    results: List[MetricResult] = []
    if not cases:
        return results
    selections = [removals(protocol, case) for case in cases]
    clean = numpy.array([score_of(case, ()).value for case in cases])

    def values(kind: str) -> numpy.ndarray:
        """(cases, points) probabilities after each selection; NaN where a bin is left out."""
        return numpy.array([[numpy.nan if s is None else score_of(case, s).value for s in sel[kind]]
                            for case, sel in zip(cases, selections)])

    def estimate(per_case: numpy.ndarray) -> Estimate:
        return bootstrap(per_case, numpy.mean, n_resamples=n_resamples, seed=seed)

    def row(metric: str, per_case: numpy.ndarray, curve: Optional[Dict] = None) -> None:
        kept = per_case[~numpy.isnan(per_case)]
        if len(kept):
            results.append(MetricResult(protocol.name, method, metric, estimate(kept), curve))

    points, axis = list(protocol.points), protocol.axis
    for metric, kind in (("comprehensiveness", "top"), ("sufficiency", "keep")):
        if metric in protocol.measures:
            drops = clean[:, None] - values(kind)
            row(metric, _nanmean(drops, 1), {axis: points, "mean": _nanmean(drops, 0).tolist()})
    if "degradation" in protocol.measures:
        x = [0.0] + points
        curves = {}
        for order, kind in (("morf", "top"), ("lerf", "bottom")):
            probabilities = numpy.concatenate([clean[:, None], values(kind)], 1)
            curves[order] = probabilities
            band = [bootstrap(probabilities[:, i], n_resamples=n_resamples, seed=seed) for i in range(len(x))]
            curve = {axis: x, "mean": [b.value for b in band], "ci_low": [b.low for b in band],
                     "ci_high": [b.high for b in band]}
            accuracy = _accuracy(cases, selections, kind, score_of)
            if accuracy is not None:
                curve["accuracy"] = accuracy
            row(f"degradation_{order}", numpy.array([trapezoid(p, x) for p in probabilities]), curve)
        row("degradation_area_between", numpy.array([trapezoid(l - m, x)
                                                     for m, l in zip(curves["morf"], curves["lerf"])]))
    if "f1_auc" in protocol.measures:
        judged = [i for i, case in enumerate(cases) if case.reference is not None]
        if judged:
            decisions = numpy.array([[case.reference] + [score_of(case, s).decision for s in selections[i]["top"]]
                                     for i, case in ((i, cases[i]) for i in judged)])
            n_classes = int(decisions.max()) + 1

            def f1_auc(rows: numpy.ndarray) -> float:
                return trapezoid([macro_f1(rows[:, 0], rows[:, 1 + j], n_classes) for j in range(len(points))],
                                 points)

            f1 = [macro_f1(decisions[:, 0], decisions[:, 1 + j], n_classes) for j in range(len(points))]
            results.append(MetricResult(protocol.name, method, "f1_auc",
                                        bootstrap(decisions, f1_auc, n_resamples=n_resamples, seed=seed),
                                        {axis: points, "macro_f1": f1}))
    return results


def _nanmean(values: numpy.ndarray, axis: int) -> numpy.ndarray:
    """The mean of the non-NaN entries along `axis`; NaN where there are none (a case whose bins were all
    left out, a bin no case kept)."""
    counts = (~numpy.isnan(values)).sum(axis)
    sums = numpy.nansum(values, axis)
    return numpy.where(counts > 0, sums / numpy.maximum(counts, 1), numpy.nan)


def _accuracy(cases: List[Case], selections: List[Dict], kind: str, score_of: ScoreOf) -> Optional[List[float]]:
    """Per point (0 first), the share of cases whose decision matches their reference."""
    judged = [(case, sel) for case, sel in zip(cases, selections) if case.reference is not None]
    if not judged:
        return None
    table = numpy.array([[score_of(case, ()).decision == case.reference]
                         + [score_of(case, s).decision == case.reference for s in sel[kind]] for case, sel in judged])
    return table.mean(0).tolist()
