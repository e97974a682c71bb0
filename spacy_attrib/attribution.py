"""The result type and the `Doc`/`Span`/`Token` extensions that hold it.

Results live in ``doc.user_data`` as plain dicts of numbers, strings and numpy arrays, so they survive
`DocBin` round trips and ``nlp.pipe(n_process=...)`` (both serialise user data with msgpack). The
extensions ``doc._.attributions``, ``span._.attributions`` (entities, spancat spans: looked up by the
span's token offsets) and ``token._.attributions`` are read-only views that build `Attribution` objects
from them: ``{method key: {target label: Attribution}}``.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy
from spacy.tokens import Doc, Span, Token

USER_DATA_KEY = "spacy_attrib"


@dataclass(frozen=True)
class Segment:
    """One side of a sentence pair (or its separator): token range, token texts and their scores."""

    name: str
    start: int
    end: int
    tokens: Tuple[str, ...]
    scores: numpy.ndarray


@dataclass(frozen=True)
class Attribution:
    """One explanation: how much each spaCy token (and each wordpiece) contributed to one target.

    method: the method's key in ``doc._.attributions``.
    label: the explained label.
    scores: one float per spaCy token of the doc (0 for tokens without wordpieces).
    wordpieces: the wordpieces the transformer saw, row after row (long docs span several windows,
        each with its own special tokens), padding excluded.
    wordpiece_scores: one float per entry of `wordpieces`.
    alignment: for each spaCy token, the indices into `wordpieces` it covers.
    output: the attributed output of the target (e.g. its log-probability) at the input.
    token: the token the target belongs to, for per-token heads (tagger); None otherwise.
    span: (start, end) token offsets of the span the target belongs to (ner entities, spancat spans);
        None otherwise.
    extras: method-specific values, e.g. ``delta`` (completeness gap) for integrated gradients.
    segments: for a sentence pair (`spacy_attrib.make_pair`), ``a``, ``separator`` and ``b``, in order;
        they partition the tokens, so their scores add up to ``scores.sum()``. Empty otherwise.
    """

    method: str
    label: str
    scores: numpy.ndarray
    wordpieces: List[str]
    wordpiece_scores: numpy.ndarray
    alignment: List[List[int]]
    output: float
    token: Optional[int] = None
    span: Optional[Tuple[int, int]] = None
    extras: Dict[str, Any] = field(default_factory=dict)
    segments: Dict[str, Segment] = field(default_factory=dict)

    @property
    def delta(self) -> Optional[float]:
        """Completeness gap Σ scores − (f(x) − f(baseline)), where the method has one."""
        return self.extras.get("delta")

    def to_dict(self) -> Dict[str, Any]:
        return {
            "method": self.method, "label": self.label, "token": self.token,
            "span": None if self.span is None else [int(self.span[0]), int(self.span[1])],
            "scores": numpy.asarray(self.scores, dtype="float32"),
            "wordpieces": list(self.wordpieces),
            "wordpiece_scores": numpy.asarray(self.wordpiece_scores, dtype="float32"),
            "alignment": [list(map(int, a)) for a in self.alignment],
            "output": float(self.output), "extras": dict(self.extras),
            "segments": [{"name": s.name, "start": s.start, "end": s.end, "tokens": list(s.tokens)}
                         for s in self.segments.values()],
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Attribution":
        scores = numpy.asarray(data["scores"], dtype="float32")
        return cls(
            method=data["method"], label=data["label"], token=data.get("token"),
            span=None if data.get("span") is None else (int(data["span"][0]), int(data["span"][1])),
            scores=scores,
            wordpieces=list(data["wordpieces"]),
            wordpiece_scores=numpy.asarray(data["wordpiece_scores"], dtype="float32"),
            alignment=[list(a) for a in data["alignment"]],
            output=float(data["output"]), extras=dict(data.get("extras", {})),
            segments=segments_of(scores, [(s["name"], s["start"], s["end"], s["tokens"])
                                          for s in data.get("segments", [])]),
        )


@dataclass(frozen=True)
class Interaction:
    """A token × token explanation of one output of two docs (a, b): ``matrix[i, j]`` is what the pair of
    token i of a and token j of b contributed (for integrated Jacobians, `spacy_attrib.methods.similarity`).

    method: the method's name.
    matrix: (tokens of a, tokens of b), spaCy tokens (a token with no wordpiece has a zero row/column).
    tokens_a, tokens_b: the token texts.
    wordpiece_matrix: (real wordpieces of a, real wordpieces of b), special tokens included.
    wordpieces_a, wordpieces_b: the wordpieces, row after row (padding excluded).
    alignment_a, alignment_b: for each spaCy token, the indices into its side's wordpieces it covers.
    output: the explained output, e.g. the similarity s(a, b).
    extras: method-specific values, e.g. ``error`` (completeness error) and ``reference_terms``.
    """

    method: str
    matrix: numpy.ndarray
    tokens_a: Tuple[str, ...]
    tokens_b: Tuple[str, ...]
    wordpiece_matrix: numpy.ndarray
    wordpieces_a: List[str]
    wordpieces_b: List[str]
    alignment_a: List[List[int]]
    alignment_b: List[List[int]]
    output: float
    extras: Dict[str, Any] = field(default_factory=dict)

    @property
    def scores_a(self) -> numpy.ndarray:
        """Per token of a: its row sum, what it contributed together with all of b."""
        return self.matrix.sum(1)

    @property
    def scores_b(self) -> numpy.ndarray:
        """Per token of b: its column sum."""
        return self.matrix.sum(0)

    @property
    def error(self) -> Optional[float]:
        """The completeness error, where the method has one."""
        return self.extras.get("error")

    def transposed(self) -> "Interaction":
        """The same explanation with the sides swapped: (b, a)."""
        return Interaction(self.method, self.matrix.T, self.tokens_b, self.tokens_a, self.wordpiece_matrix.T,
                           self.wordpieces_b, self.wordpieces_a, self.alignment_b, self.alignment_a, self.output,
                           dict(self.extras))

    def to_dict(self) -> Dict[str, Any]:
        return {
            "method": self.method, "matrix": numpy.asarray(self.matrix, dtype="float32"),
            "tokens_a": list(self.tokens_a), "tokens_b": list(self.tokens_b),
            "wordpiece_matrix": numpy.asarray(self.wordpiece_matrix, dtype="float32"),
            "wordpieces_a": list(self.wordpieces_a), "wordpieces_b": list(self.wordpieces_b),
            "alignment_a": [list(map(int, a)) for a in self.alignment_a],
            "alignment_b": [list(map(int, a)) for a in self.alignment_b],
            "output": float(self.output), "extras": dict(self.extras),
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Interaction":
        return cls(
            method=data["method"], matrix=numpy.asarray(data["matrix"], dtype="float32"),
            tokens_a=tuple(data["tokens_a"]), tokens_b=tuple(data["tokens_b"]),
            wordpiece_matrix=numpy.asarray(data["wordpiece_matrix"], dtype="float32"),
            wordpieces_a=list(data["wordpieces_a"]), wordpieces_b=list(data["wordpieces_b"]),
            alignment_a=[list(a) for a in data["alignment_a"]], alignment_b=[list(a) for a in data["alignment_b"]],
            output=float(data["output"]), extras=dict(data.get("extras", {})),
        )


def segments_of(scores: numpy.ndarray, ranges: List[Tuple[str, int, int, List[str]]]) -> Dict[str, Segment]:
    """Segments (name, start, end, token texts) with their slices of the token scores."""
    return {name: Segment(name, int(start), int(end), tuple(tokens), scores[start:end])
            for name, start, end, tokens in ranges}


def _store(doc: Doc) -> Dict[str, Any]:
    store = doc.user_data.setdefault(USER_DATA_KEY, {"doc": {}, "tokens": {}})
    store.setdefault("spans", {})
    return store


def _span_key(start: int, end: int) -> str:
    return f"{start}:{end}"


def set_attribution(doc: Doc, attribution: Attribution) -> None:
    """Record `attribution` on `doc`, or on its token or span where the target belongs to one."""
    store = _store(doc)
    if attribution.span is not None:
        by_method = store["spans"].setdefault(_span_key(*attribution.span), {})
    elif attribution.token is not None:
        by_method = store["tokens"].setdefault(str(attribution.token), {})
    else:
        by_method = store["doc"]
    by_method.setdefault(attribution.method, {})[attribution.label] = attribution.to_dict()


def record_seconds(doc: Doc, method: str, seconds: float) -> None:
    """Record the seconds `method` took per doc where `doc` was explained (saved with the doc's user data, so
    an evaluation of docs explained earlier reports the time it took then)."""
    _store(doc).setdefault("seconds", {})[method] = float(seconds)


def recorded_seconds(doc: Doc) -> Dict[str, float]:
    return dict(doc.user_data.get(USER_DATA_KEY, {}).get("seconds", {}))


def mark_explained(doc: Doc, method: str) -> None:
    """Record that `method` ran on `doc`, so a doc with nothing to explain shows an empty result."""
    _store(doc)["doc"].setdefault(method, {})


def _build(by_method: Dict[str, Dict[str, Dict]]) -> Dict[str, Dict[str, Attribution]]:
    return {method: {label: Attribution.from_dict(data) for label, data in by_label.items()}
            for method, by_label in by_method.items()}


def get_doc_attributions(doc: Doc) -> Dict[str, Dict[str, Attribution]]:
    return _build(doc.user_data.get(USER_DATA_KEY, {}).get("doc", {}))


def get_token_attributions(token: Token) -> Dict[str, Dict[str, Attribution]]:
    tokens = token.doc.user_data.get(USER_DATA_KEY, {}).get("tokens", {})
    return _build(tokens.get(str(token.i), {}))


def get_span_attributions(span: Span) -> Dict[str, Dict[str, Attribution]]:
    """The results for the span's extent (token offsets), whatever its label: one entry per explained
    label, so spancat spans that share an extent share a dict."""
    spans = span.doc.user_data.get(USER_DATA_KEY, {}).get("spans", {})
    return _build(spans.get(_span_key(span.start, span.end), {}))


def iter_attributions(doc: Doc) -> Iterator[Attribution]:
    """Every result stored on `doc`: the doc's own, then each token's, then each span's."""
    store = doc.user_data.get(USER_DATA_KEY, {})
    anchors = [store.get("doc", {}), *store.get("tokens", {}).values(), *store.get("spans", {}).values()]
    for by_method in anchors:
        for by_label in by_method.values():
            for data in by_label.values():
                yield Attribution.from_dict(data)


def install_extensions() -> None:
    """Register ``doc._.attributions``, ``span._.attributions`` and ``token._.attributions`` (idempotent)."""
    for cls, getter in ((Doc, get_doc_attributions), (Span, get_span_attributions), (Token, get_token_attributions)):
        if not cls.has_extension("attributions"):
            cls.set_extension("attributions", getter=getter)
