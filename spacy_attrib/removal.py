"""Re-scoring docs with tokens removed: the one loop that faithfulness metrics and perturbation methods run.

A `Removal` is one request: doc `d` with the spaCy tokens `removed` taken out, read at one target (its
label, and the token or span it belongs to). `Rescorer.score` answers many requests with the pipeline's
own transformer and head (through `DifferentiableView`, in its `output`: ``prob`` for the metrics), in
batches, never one call per text; requests that remove the same tokens of the same doc share one pass,
so a doc with many targets (a tagger's tokens, all labels) costs one pass per removal, not per target.
Strategies (``REMOVALS``):

- ``delete``: the doc is rebuilt from the kept tokens' ``text_with_ws`` and encoded afresh, so the
  transformer re-tokenizes the shortened text (the ERASER and IBA protocols). Token and span targets move
  to their new offsets; their own tokens are never removed. A doc with every token deleted is scored as
  the empty doc through the head's model (spaCy's components skip empty docs; their models pool nothing).
  The ner's explained output is defined along the predicted path of the doc it was explained on, which
  deletion changes: delete is refused for ner, use ``mask`` or ``unk``.
- ``mask`` / ``unk`` / ``pad``: the wordpieces of removed tokens become ``[MASK]`` / ``[UNK]`` / the pad id
  in the doc's own rows (``mask``: Atanasova et al.'s protocol; ``pad``: Wu & Ong's, the attention mask
  staying 1 on the replaced wordpieces, so the model attends to the [PAD] embedding that padding otherwise
  hides); the doc's layout and the head's plan (the ner's path, spancat's suggested spans) stay those of
  the clean doc.

Docs are encoded in groups of `batch_size` sorted by length (or come encoded: `score_encoded`), and
transformer rows run at most `max_rows` at a time, so memory stays bounded on long docs and many requests.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.language import Language
from spacy.tokens import Doc
from spacy.util import minibatch

from .align import WordpieceLayout
from .view import DifferentiableView, EncodedBatch

REMOVALS = ("delete", "mask", "unk", "pad")


@dataclass(frozen=True)
class Removal:
    """Doc `d` without the tokens `removed`, read at the target `label` (of `token` or `span`, if any)."""

    d: int
    removed: Tuple[int, ...]
    label: str
    token: Optional[int] = None
    span: Optional[Tuple[int, int]] = None

    @property
    def instance(self) -> Tuple[int, Tuple[int, ...]]:
        """What the transformer runs for the request: the doc and the set of tokens removed."""
        return self.d, tuple(sorted(set(self.removed)))


@dataclass(frozen=True)
class Score:
    """The target label's value (in the rescorer's output) on the reduced doc, and the head's decision at
    the target's position: the arg-max label's index for exclusive heads, else whether the label's
    probability passes the head's threshold."""

    value: float
    decision: int


class Rescorer:
    """Scores `Removal` requests through the pipeline's transformer and `head`.

    nlp: the pipeline; head: the head component (default: the one listening to the transformer);
    removal: ``delete``, ``mask``, ``unk`` or ``pad``; output: the value read, ``prob`` (default),
    ``log_prob`` or ``logit``; dtype: the transformer's (see `DifferentiableView`); batch_size: docs encoded
    together; max_rows: transformer rows per forward pass.
    """

    def __init__(self, nlp: Language, head: Optional[str] = None, *, removal: str = "delete", output: str = "prob",
                 dtype: str = "float32", batch_size: int = 32, max_rows: int = 128):
        if removal not in REMOVALS:
            raise ValueError(f"removal must be one of {REMOVALS}, got {removal!r}")
        self.view = DifferentiableView(nlp, head, output=output, dtype=dtype)
        if removal == "delete" and "ner" in type(self.view.head).factories:
            raise ValueError(f"removal 'delete' is not defined for the ner {self.view.head_name!r}: an entity's output "
                             "is read along the predicted path of the doc it was explained on, which deleting "
                             "tokens changes. Use removal 'mask', 'unk' or 'pad'.")
        self.replacement = None if removal == "delete" else self._replacement_id(removal)
        self.removal = removal
        self.output = output
        self.batch_size = batch_size
        self.max_rows = max_rows
        self.threshold = decision_threshold(self.view)

    def _replacement_id(self, removal: str) -> int:
        """The wordpiece id removed tokens become, checked before any doc is scored."""
        try:
            return self.view.token_id(removal)
        except ValueError as error:
            raise ValueError(f"removal {removal!r} needs the tokenizer's {removal} token: {error}. Use another "
                             f"removal ({', '.join(r for r in REMOVALS if r != removal)}).") from None

    def label_index(self, label: str) -> int:
        if label not in self.view.labels:
            raise ValueError(f"Unknown label {label!r} for {self.view.head_name!r}; its labels are {list(self.view.labels)}")
        return self.view.labels.index(label)

    def score(self, docs: Sequence[Doc], requests: Sequence[Removal]) -> List[Score]:
        """One `Score` per request (its `d` indexes `docs`), in order."""
        scores: List[Optional[Score]] = [None] * len(requests)
        if self.removal == "delete":
            self._score_deleted(docs, requests, scores)
            return scores  # type: ignore[return-value]
        by_doc: Dict[int, List[int]] = {}
        for i, request in enumerate(requests):
            by_doc.setdefault(request.d, []).append(i)
        for doc_group in minibatch(sorted(by_doc, key=lambda d: len(docs[d])), self.batch_size):
            batch = self.view.encode([docs[d] for d in doc_group])
            local = {d: j for j, d in enumerate(doc_group)}
            mine = [i for d in doc_group for i in by_doc[d]]
            moved = [Removal(local[requests[i].d], requests[i].removed, requests[i].label, requests[i].token,
                             requests[i].span) for i in mine]
            for i, score in zip(mine, self.score_encoded(batch, moved)):
                scores[i] = score
        return scores  # type: ignore[return-value]

    def score_encoded(self, batch: EncodedBatch, requests: Sequence[Removal]) -> List[Score]:
        """`score` for requests on the docs of a batch the view has encoded (its plan is the clean docs');
        a request's `d` indexes `batch.docs`."""
        if self.removal == "delete":
            return self.score(batch.docs, requests)
        instances, members = _instances(requests)
        scores: List[Optional[Score]] = [None] * len(requests)
        layouts = {d: batch.layout(d) for d in {d for d, _ in instances}}  # once per doc, not per instance
        for chunk in _row_chunks([batch.rows[d] for d, _ in instances], self.max_rows):
            ids = torch.cat([self._replaced_rows(batch, d, removed, layouts[d]) for d, removed in
                             (instances[k] for k in chunk)])
            with torch.no_grad():
                output = self.view.forward(batch, doc_index=[instances[k][0] for k in chunk], input_ids=ids,
                                           max_rows=self.max_rows)
            values = output.scores.float().cpu().numpy()
            for row, k in enumerate(chunk):
                for i in members[k]:
                    r = requests[i]
                    scores[i] = self._read(values[row], batch, r.d, r.token, r.span, r.label)
        return scores  # type: ignore[return-value]

    # -- delete: new docs, encoded afresh -------------------------------------------------------------
    def _score_deleted(self, docs: Sequence[Doc], requests: Sequence[Removal], scores: List) -> None:
        instances, members = _instances(requests)
        reduced = [kept_tokens(docs[d], removed) for d, removed in instances]
        order = sorted(range(len(instances)), key=lambda k: len(reduced[k][0]))
        for group in minibatch(order, self.batch_size):
            group_docs = [reduced[k][0] for k in group]
            if not any(len(doc) for doc in group_docs):
                # spacy-transformers cannot run a batch of empty docs alone: a carrier doc goes with them
                # and is not read.
                group_docs.append(docs[instances[group[0]][0]])
            batch = self.view.encode(group_docs)
            with torch.no_grad():
                output = self.view.forward(batch, max_rows=self.max_rows)
            values = output.scores.float().cpu().numpy()
            for j, k in enumerate(group):
                for i in members[k]:
                    token, span = moved_target(requests[i], reduced[k][1])
                    scores[i] = self._read(values[j], batch, j, token, span, requests[i].label)

    def _replaced_rows(self, batch: EncodedBatch, d: int, removed: Sequence[int], layout: WordpieceLayout
                       ) -> torch.Tensor:
        """Doc `d`'s rows (`layout` its layout) with the wordpieces of the `removed` tokens replaced, in
        every window they are in."""
        start, n = batch.row_starts[d], batch.rows[d]
        ids = batch.input_ids[start:start + n].clone()
        pieces = [p for t in removed for p in layout.alignment[t]]
        flat = torch.as_tensor(layout.positions[pieces], dtype=torch.long, device=ids.device)
        ids.view(-1)[flat] = self.replacement
        return ids

    # -- reading the target -------------------------------------------------------------------------
    def _read(self, values: numpy.ndarray, batch: EncodedBatch, j: int, token: Optional[int],
              span: Optional[Tuple[int, int]], label: str) -> Score:
        """The target's score from one instance's output (positions, labels); doc `j` of `batch` holds its
        plan."""
        position = self.view.head.position(batch.plan, j, token, span, label)
        if position is None:
            raise ValueError(f"{self.view.head_name!r} has no output for the target {label!r} at "
                             f"{span} once tokens are removed (its suggester does not propose the span)")
        k = self.label_index(label)
        at = values[position]
        if self.view.exclusive:
            decision = int(at.argmax())
        else:
            decision = int(as_probability(float(at[k]), self.output) >= self.threshold)
        return Score(float(at[k]), decision)


def as_probability(value: float, output: str) -> float:
    """A non-exclusive head's label probability from its value in `output` (the sigmoid's)."""
    if output == "log_prob":
        return float(numpy.exp(value))
    if output == "logit":
        return float(1.0 / (1.0 + numpy.exp(-value)))
    return value


def decision_threshold(view: DifferentiableView) -> float:
    """The probability at which a non-exclusive head predicts a label (its component's ``threshold``; 0.5
    where it has none, or None as ``spancat_singlelabel``, whose decision is the argmax)."""
    threshold = view.head.pipe.cfg.get("threshold")
    return 0.5 if threshold is None else float(threshold)


def _instances(requests: Sequence[Removal]) -> Tuple[List[Tuple[int, Tuple[int, ...]]], List[List[int]]]:
    """The distinct (doc, removed tokens) the requests need, and which requests each one answers."""
    index: Dict[Tuple[int, Tuple[int, ...]], int] = {}
    members: List[List[int]] = []
    for i, request in enumerate(requests):
        k = index.setdefault(request.instance, len(index))
        if k == len(members):
            members.append([])
        members[k].append(i)
    return list(index), members


def _row_chunks(rows: Sequence[int], max_rows: int) -> List[List[int]]:
    """Consecutive instances (of `rows` transformer rows each) in chunks of at most `max_rows` rows; an
    instance larger than that is a chunk of its own."""
    chunks: List[List[int]] = []
    total = 0
    for k, n in enumerate(rows):
        if chunks and chunks[-1] and total + n <= max_rows:
            chunks[-1].append(k)
            total += n
        else:
            chunks.append([k])
            total = n
    return chunks


def kept_tokens(doc: Doc, removed: Sequence[int]) -> Tuple[Doc, Dict[int, int]]:
    """`doc` rebuilt from the tokens not `removed` (their text and trailing whitespace), and where each kept
    token is in it."""
    gone = set(removed)
    kept = [t for t in doc if t.i not in gone]
    reduced = Doc(doc.vocab, words=[t.text for t in kept], spaces=[bool(t.whitespace_) for t in kept])
    return reduced, {t.i: i for i, t in enumerate(kept)}


def moved_target(request: Removal, new_index: Dict[int, int]) -> Tuple[Optional[int], Optional[Tuple[int, int]]]:
    """The request's token and span at their offsets in the reduced doc (their own tokens are kept)."""
    token = None if request.token is None else new_index[request.token]
    span = None if request.span is None else (new_index[request.span[0]], new_index[request.span[1] - 1] + 1)
    return token, span


def reduce_doc(doc: Doc, request: Removal) -> Tuple[Doc, Removal]:
    """`doc` rebuilt from the tokens `request` keeps, and the request's target moved to its offsets there."""
    reduced, new_index = kept_tokens(doc, request.removed)
    token, span = moved_target(request, new_index)
    return reduced, Removal(0, (), request.label, token, span)


def removable_tokens(doc: Doc, alignment: Sequence[Sequence[int]], token: Optional[int],
                     span: Optional[Tuple[int, int]]) -> numpy.ndarray:
    """Indices of the tokens a protocol may remove: those with wordpieces, outside the target's own token or
    span (for an entity: remove the context, watch the entity)."""
    keep = set(range(*span)) if span else ({token} if token is not None else set())
    return numpy.asarray([i for i in range(len(doc)) if alignment[i] and i not in keep], dtype=int)
