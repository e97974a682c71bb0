"""`evaluate`: every attribution component of a pipeline, measured over a corpus under named protocols."""

import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example
from tqdm import tqdm

from ..attribution import USER_DATA_KEY, iter_attributions, record_seconds, recorded_seconds
from ..methods.base import AttributionComponent
from ..removal import Removal, Rescorer, Score, decision_threshold, removable_tokens
from ..view import DifferentiableView
from .diagnostics import confidence_indication, dataset_consistency, rationale_consistency, similar_pairs
from .faithfulness import Case, MetricResult, measure, needed, removals, select
from .plausibility import METRICS as PLAUSIBILITY_METRICS, RATIONALE_KEY, plausibility, rationale_mask
from .protocols import Protocol, get_protocol
from .report import Report
from .statistics import Estimate, bootstrap

Corpus = Iterable[Union[Doc, Example]]


def attribution_components(nlp: Language, methods: Optional[Sequence[str]] = None
                           ) -> List[Tuple[str, AttributionComponent]]:
    """The pipeline's attribution components, or those named in `methods` (component names or result keys)."""
    found = [(name, pipe) for name, pipe in nlp.pipeline if isinstance(pipe, AttributionComponent)]
    if not found:
        raise ValueError(f"The pipeline has no attribution component (components: {nlp.pipe_names}); "
                         "add one, e.g. nlp.add_pipe('attr_integrated_gradients')")
    if methods is None:
        return found
    chosen = []
    for method in methods:
        match = [(name, pipe) for name, pipe in found if method in (name, pipe.key)]
        if not match:
            raise ValueError(f"Unknown method {method!r}; the pipeline's attribution components: "
                             f"{[f'{n} ({p.key})' for n, p in found]}")
        chosen.extend(match)
    return chosen


def explain_corpus(nlp: Language, corpus: Corpus, components: Sequence[Tuple[str, AttributionComponent]], *,
                   progress: bool = False) -> Tuple[List[Doc], List[Optional[Doc]], Dict[str, float]]:
    """Predicted and explained docs, the gold docs they came from (None where there are none), and each
    method's seconds per doc.

    Docs explained earlier are taken as they are: a doc that already holds every chosen method's results
    (its annotations are predictions: no gold), or an `Example` whose predicted doc does (its reference is
    the gold; e.g. `spacy-attrib evaluate --explained`), with the seconds per doc recorded when it was
    explained. The others are copied (words, spaces, user data), run through the pipeline without its
    attribution components, then through each attribution component in turn, timed; the time is recorded
    on each doc (`record_seconds`)."""
    keys = [pipe.key for _, pipe in components]
    predicted: List[Doc] = []
    gold: List[Optional[Doc]] = []
    reused: List[int] = []
    for item in corpus:
        reference = item.reference if isinstance(item, Example) else item
        explained = item.predicted if isinstance(item, Example) else reference
        if all(key in explained.user_data.get(USER_DATA_KEY, {}).get("doc", {}) for key in keys):
            predicted.append(explained)
            gold.append(reference if explained is not reference else None)
            reused.append(len(predicted) - 1)
        else:
            copy = Doc(nlp.vocab, words=[t.text for t in reference], spaces=[bool(t.whitespace_) for t in reference])
            copy.user_data.update({k: v for k, v in reference.user_data.items() if k != USER_DATA_KEY})
            predicted.append(copy)
            gold.append(reference)
    to_run = sorted(set(range(len(predicted))) - set(reused))
    attribution_names = [name for name, pipe in nlp.pipeline if isinstance(pipe, AttributionComponent)]
    seconds: Dict[str, float] = {}
    for key in keys:
        times = [recorded_seconds(predicted[i])[key] for i in reused if key in recorded_seconds(predicted[i])]
        if times and len(times) == len(reused) and not to_run:
            seconds[key] = float(numpy.mean(times))
    if to_run:
        docs = list(nlp.pipe([predicted[i] for i in to_run], disable=attribution_names))
        for i, doc in zip(to_run, docs):
            predicted[i] = doc
        for name, pipe in components:
            start = time.perf_counter()
            explained = pipe.pipe(docs, batch_size=pipe.cfg["batch_size"])
            for _ in tqdm(explained, total=len(docs), desc=f"explaining ({name})", disable=not progress, leave=False):
                pass
            seconds[pipe.key] = (time.perf_counter() - start) / len(docs)
            for doc in docs:
                record_seconds(doc, pipe.key, seconds[pipe.key])
    return predicted, gold, seconds


def _reference(view: DifferentiableView, doc: Doc, gold: Optional[Doc], label: str, token: Optional[int],
               span: Optional[Tuple[int, int]]) -> Tuple[Optional[int], bool]:
    """The decision perturbed inputs are judged against for a target: gold where the gold doc has it,
    else the pipeline's own prediction; (None, False) for span targets (no decision is defined)."""
    labels, exclusive = view.labels, view.exclusive
    if span is not None:
        return None, False
    if token is not None:
        for source, is_gold in ((gold, True), (doc, False)):
            if source is not None and source.has_annotation("TAG") and source[token].tag_ in labels:
                return labels.index(source[token].tag_), is_gold
        return None, False
    for source, is_gold in ((gold, True), (doc, False)):
        cats = source.cats if source is not None else {}
        if cats and all(l in cats for l in labels):
            if exclusive:
                return labels.index(max(labels, key=lambda l: cats[l])), is_gold
            return int(cats[label] >= decision_threshold(view)), is_gold
    return None, False


def _is_gold_target(case: Case, view: DifferentiableView) -> bool:
    """Whether the case explains its gold label (for non-exclusive heads: a label the gold doc has)."""
    label_index = view.labels.index(case.attribution.label)
    return case.gold and (case.reference == label_index if view.exclusive else case.reference == 1)


def evaluate(nlp: Language, corpus: Corpus, *, methods: Optional[Sequence[str]] = None,
             protocols: Sequence[Union[str, Protocol]] = ("eraser",), plausibility_key: str = RATIONALE_KEY,
             diagnostics: bool = True, compare_with: Optional[Language] = None, n_pairs: int = 100,
             batch_size: int = 32, max_rows: int = 128, n_resamples: int = 1000, seed: int = 0,
             progress: bool = False) -> Report:
    """Measure the pipeline's attribution components over `corpus` (Docs with gold annotations, e.g. from
    a DocBin; Examples; or docs already explained).

    protocols: presets (``eraser``, ``ferret``, ``atanasova``, ``iba``, ``degradation``, ``wu_ong``) or
    `Protocol`s; a protocol's filters (`min_tokens`, `correct_only`) choose among the cases, and a protocol
    that keeps none is an error.
    Plausibility is measured where docs carry ``doc.spans[plausibility_key]``. With `diagnostics`, the
    Atanasova et al. properties that one pipeline allows (confidence indication, dataset consistency over
    `n_pairs` similar and dissimilar pairs); `compare_with`, a second pipeline of the same architecture
    (another seed) with the same components, adds rationale consistency. Every perturbed input is scored
    through the pipeline in batches of `batch_size` docs, at most `max_rows` transformer rows at a time.
    """
    corpus = list(corpus)
    components = attribution_components(nlp, methods)
    chosen = [get_protocol(p) for p in protocols]
    docs, gold, seconds = explain_corpus(nlp, corpus, components, progress=progress)
    results: List[MetricResult] = []
    rescorers: Dict[Tuple[str, str], Rescorer] = {}
    scored: Dict[Tuple[str, str], Dict[Removal, Score]] = {}
    for name, pipe in components:
        head = pipe.view.head_name
        for removal in {p.removal for p in chosen}:
            if (head, removal) not in rescorers:
                scored[head, removal] = {}
                rescorers[head, removal] = Rescorer(nlp, head, removal=removal, batch_size=batch_size,
                                                    max_rows=max_rows)
        cases = _cases(docs, gold, pipe.key, pipe.view)
        if not cases:
            raise ValueError(f"No results of {pipe.key!r} on the docs: nothing to evaluate")
        for protocol in chosen:
            rescorer = rescorers[head, protocol.removal]
            selected = [c for c in cases if _is_gold_target(c, pipe.view)] if protocol.target == "gold" else cases
            if not selected:
                raise ValueError(f"Protocol {protocol.name!r} evaluates the gold label, but {pipe.key!r} explained "
                                 "no gold label of the docs (or they have none): set its labels = 'all'")
            selected = select(protocol, selected, lambda chosen_cases: [
                score.decision for score in rescorer.score(docs, [_request(c, ()) for c in chosen_cases])])
            if not selected:
                wanted = ([f"at least {protocol.min_tokens} removable tokens"] if protocol.min_tokens else []) + (
                    ["a clean decision that matches gold"] if protocol.correct_only else [])
                raise ValueError(f"Protocol {protocol.name!r} keeps no case of {pipe.key!r}: none has "
                                 + " and ".join(wanted))
            score_of = _score_all(rescorer, docs, selected, protocol, progress, scored[head, protocol.removal])
            results.extend(measure(protocol, pipe.key, selected, score_of, n_resamples=n_resamples, seed=seed))
        results.extend(_plausibility(docs, gold, cases, pipe.key, plausibility_key, n_resamples, seed))
        if pipe.key in seconds:
            results.append(MetricResult("time", pipe.key, "seconds_per_doc",
                                        Estimate(seconds[pipe.key], None, None, len(docs))))
        if diagnostics:
            results.extend(_diagnostics(nlp, docs, gold, pipe, n_pairs, compare_with, corpus, n_resamples, seed))
    return Report(results=results, protocols=chosen, nlp=nlp, n_docs=len(docs))


def _cases(docs: List[Doc], gold: List[Optional[Doc]], key: str, view: DifferentiableView) -> List[Case]:
    cases = []
    for d, doc in enumerate(docs):
        for attribution in iter_attributions(doc):
            if attribution.method != key:
                continue
            reference, is_gold = _reference(view, doc, gold[d], attribution.label, attribution.token,
                                            attribution.span)
            cases.append(Case(d, key, attribution,
                              removable_tokens(doc, attribution.alignment, attribution.token, attribution.span),
                              reference, is_gold))
    return cases


def _request(case: Case, removed: Tuple[int, ...]) -> Removal:
    a = case.attribution
    return Removal(case.d, tuple(sorted(removed)), a.label, a.token, a.span)


def _score_all(rescorer: Rescorer, docs: List[Doc], cases: List[Case], protocol: Protocol, progress: bool,
               known: Dict[Removal, Score]):
    """Score every removal the protocol needs for `cases` at once, but those `known` (scored for another
    protocol or method of the same docs: presets share many removals, all share the clean docs); returns a
    lookup (case, removed) → Score. `known` grows by what was scored."""
    requests: Dict[Removal, None] = {}
    for case in cases:
        requests[_request(case, ())] = None
        selections = removals(protocol, case)
        for kind in needed(protocol):
            for removed in selections[kind]:
                if removed is not None:
                    requests[_request(case, removed)] = None
    keys = [key for key in requests if key not in known]
    step = max(1, 8 * rescorer.batch_size)
    for start in tqdm(range(0, len(keys), step), desc=f"re-scoring ({protocol.name})", disable=not progress,
                      leave=False):
        known.update(zip(keys[start:start + step], rescorer.score(docs, keys[start:start + step])))
    return lambda case, removed: known[_request(case, removed)]


def _plausibility(docs, gold, cases: List[Case], key: str, rationale_key: str, n_resamples: int,
                  seed: int) -> List[MetricResult]:
    rows: Dict[str, List[float]] = {m: [] for m in PLAUSIBILITY_METRICS}
    for case in cases:
        if case.attribution.token is not None or case.attribution.span is not None:
            continue
        source = gold[case.d] if gold[case.d] is not None else docs[case.d]
        mask = rationale_mask(source, rationale_key)
        if mask is None:
            continue
        for metric, value in plausibility(case.attribution.scores, mask).items():
            if not numpy.isnan(value):
                rows[metric].append(value)
    return [MetricResult("plausibility", key, metric, bootstrap(values, n_resamples=n_resamples, seed=seed))
            for metric, values in rows.items() if values]


def _diagnostics(nlp, docs, gold, pipe: AttributionComponent, n_pairs: int, compare_with: Optional[Language],
                 corpus, n_resamples: int, seed: int) -> List[MetricResult]:
    """Atanasova et al.'s properties for doc-level classifiers (other heads have no doc confidence)."""
    view = pipe.view
    if view.per_token or not all(doc.cats for doc in docs):
        return []
    results = []
    confidence = confidence_indication(docs, pipe.key, n_resamples=min(n_resamples, 200), seed=seed)
    if confidence:
        results.extend(MetricResult("diagnostics", pipe.key, name, e) for name, e in confidence.items())
    activations = _layer_means(view, docs, pipe.cfg["batch_size"])
    labels = [max(doc.cats, key=doc.cats.get) for doc in docs]
    if len(docs) > 2:
        pairs = similar_pairs(docs, labels, n_pairs)
        results.append(MetricResult("diagnostics", pipe.key, "dataset_consistency",
                                    dataset_consistency(docs, activations, pipe.key, pairs,
                                                        n_resamples=n_resamples, seed=seed)))
    if compare_with is not None:
        other = dict(attribution_components(compare_with, [pipe.key]))
        other_docs, _, _ = explain_corpus(compare_with, corpus, list(other.items()))
        other_view = next(iter(other.values())).view
        results.append(MetricResult("diagnostics", pipe.key, "rationale_consistency",
                                    rationale_consistency(docs, other_docs, activations,
                                                          _layer_means(other_view, other_docs, pipe.cfg["batch_size"]),
                                                          pipe.key, n_resamples=n_resamples, seed=seed)))
    return results


def _layer_means(view, docs: Sequence[Doc], batch_size: int) -> numpy.ndarray:
    means = []
    for start in range(0, len(docs), batch_size):
        means.append(view.layer_means(view.encode(docs[start:start + batch_size])).cpu().numpy())
    return numpy.concatenate(means) if means else numpy.zeros((0, 0))
