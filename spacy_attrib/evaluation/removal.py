"""Re-scoring docs with tokens removed: the one loop every faithfulness metric runs.

A `Removal` is one request: doc `d` with the spaCy tokens `removed` taken out, read at one target (its
label, and the token or span it belongs to). `Rescorer.score` answers many requests with the pipeline's
own transformer and head (through `DifferentiableView`, output ``prob``), in batches, never one call per
text. Strategies (``REMOVALS``):

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

Docs are encoded in groups of `batch_size` sorted by length, and transformer rows run at most `max_rows`
at a time, so memory stays bounded on long docs and many requests.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.language import Language
from spacy.tokens import Doc
from spacy.util import minibatch

from ..view import DifferentiableView, EncodedBatch

REMOVALS = ("delete", "mask", "unk", "pad")


@dataclass(frozen=True)
class Removal:
    """Doc `d` without the tokens `removed`, read at the target `label` (of `token` or `span`, if any)."""

    d: int
    removed: Tuple[int, ...]
    label: str
    token: Optional[int] = None
    span: Optional[Tuple[int, int]] = None


@dataclass(frozen=True)
class Score:
    """The target label's probability on the reduced doc, and the head's decision at the target's
    position: the arg-max label's index for exclusive heads, else whether the label passes the head's
    threshold."""

    value: float
    decision: int


class Rescorer:
    """Scores `Removal` requests through the pipeline's transformer and `head`.

    nlp: the pipeline; head: the head component (default: the one listening to the transformer);
    removal: ``delete``, ``mask``, ``unk`` or ``pad``; batch_size: docs encoded together; max_rows: transformer
    rows per forward pass.
    """

    def __init__(self, nlp: Language, head: Optional[str] = None, *, removal: str = "delete",
                 batch_size: int = 32, max_rows: int = 128):
        if removal not in REMOVALS:
            raise ValueError(f"removal must be one of {REMOVALS}, got {removal!r}")
        self.view = DifferentiableView(nlp, head, output="prob")
        if removal == "delete" and "ner" in type(self.view.head).factories:
            raise ValueError(f"removal 'delete' is not defined for the ner {self.view.head_name!r}: an entity's output "
                             "is read along the predicted path of the doc it was explained on, which deleting "
                             "tokens changes. Use removal 'mask', 'unk' or 'pad'.")
        self.replacement = None if removal == "delete" else self._replacement_id(removal)
        self.removal = removal
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
        """One `Score` per request, in order."""
        scores: List[Optional[Score]] = [None] * len(requests)
        if self.removal == "delete":
            self._score_deleted(docs, requests, scores)
        else:
            self._score_replaced(docs, requests, scores)
        return scores  # type: ignore[return-value]

    # -- delete: new docs, encoded afresh -------------------------------------------------------------
    def _score_deleted(self, docs: Sequence[Doc], requests: Sequence[Removal], scores: List) -> None:
        reduced = [reduce_doc(docs[r.d], r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: len(reduced[i][0]))
        for group in minibatch(order, self.batch_size):
            group_docs = [reduced[i][0] for i in group]
            doc_index = list(range(len(group)))
            if not any(len(doc) for doc in group_docs):
                # spacy-transformers cannot run a batch of empty docs alone: a carrier doc goes with them
                # and is not read.
                group_docs.append(docs[requests[group[0]].d])
                doc_index.append(len(group))
            batch = self.view.encode(group_docs)
            self._read(batch, [reduced[i][1] for i in group], doc_index, None, group, scores)

    # -- mask / unk / pad: the doc's own rows with wordpieces replaced --------------------------------
    def _score_replaced(self, docs: Sequence[Doc], requests: Sequence[Removal], scores: List) -> None:
        replacement = self.replacement
        by_doc: Dict[int, List[int]] = {}
        for i, request in enumerate(requests):
            by_doc.setdefault(request.d, []).append(i)
        doc_order = sorted(by_doc, key=lambda d: len(docs[d]))
        for doc_group in minibatch(doc_order, self.batch_size):
            batch = self.view.encode([docs[d] for d in doc_group])
            local = {d: j for j, d in enumerate(doc_group)}
            pending = [i for d in doc_group for i in by_doc[d]]
            chunk: List[int] = []
            rows = 0
            for i in pending + [-1]:
                n = batch.rows[local[requests[i].d]] if i >= 0 else 0
                if chunk and (i < 0 or rows + n > self.max_rows):
                    doc_index = [local[requests[k].d] for k in chunk]
                    ids = torch.cat([self._replaced_rows(batch, local[requests[k].d], requests[k].removed, replacement)
                                     for k in chunk])
                    self._read(batch, [requests[k] for k in chunk], doc_index, ids, chunk, scores)
                    chunk, rows = [], 0
                if i >= 0:
                    chunk.append(i)
                    rows += n

    @staticmethod
    def _replaced_rows(batch: EncodedBatch, j: int, removed: Sequence[int], replacement: int) -> torch.Tensor:
        start, n = batch.row_starts[j], batch.rows[j]
        ids = batch.input_ids[start:start + n].clone()
        layout = batch.layout(j)
        pieces = [p for t in removed for p in layout.alignment[t]]
        flat = torch.as_tensor(layout.positions[pieces], dtype=torch.long, device=ids.device)
        ids.view(-1)[flat] = replacement
        return ids

    # -- reading the target -------------------------------------------------------------------------
    def _read(self, batch: EncodedBatch, targets: Sequence[Removal], doc_index: List[int],
              input_ids: Optional[torch.Tensor], slots: Sequence[int], scores: List) -> None:
        with torch.no_grad():
            output = self.view.forward(batch, doc_index=doc_index, input_ids=input_ids, max_rows=self.max_rows)
        values = output.scores.float().cpu().numpy()
        for row, (slot, target, j) in enumerate(zip(slots, targets, doc_index)):  # extra rows: carriers
            position = self.view.head.position(batch.plan, j, target.token, target.span, target.label)
            if position is None:
                raise ValueError(f"{self.view.head_name!r} has no output for the target {target.label!r} at "
                                 f"{target.span} once tokens are removed (its suggester does not propose the span)")
            k = self.label_index(target.label)
            at = values[row, position]
            decision = int(at.argmax()) if self.view.exclusive else int(at[k] >= self.threshold)
            scores[slot] = Score(float(at[k]), decision)


def decision_threshold(view: DifferentiableView) -> float:
    """The probability at which a non-exclusive head predicts a label (its component's ``threshold``)."""
    return float(view.head.pipe.cfg.get("threshold", 0.5))


def reduce_doc(doc: Doc, request: Removal) -> Tuple[Doc, Removal]:
    """`doc` rebuilt from the tokens `request` keeps (their text and trailing whitespace), and the request's
    target moved to its offsets there."""
    removed = set(request.removed)
    kept = [t for t in doc if t.i not in removed]
    new_index = {t.i: i for i, t in enumerate(kept)}
    reduced = Doc(doc.vocab, words=[t.text for t in kept], spaces=[bool(t.whitespace_) for t in kept])
    token = None if request.token is None else new_index[request.token]
    span = None if request.span is None else (new_index[request.span[0]], new_index[request.span[1] - 1] + 1)
    return reduced, Removal(0, (), request.label, token, span)


def removable_tokens(doc: Doc, alignment: Sequence[Sequence[int]], token: Optional[int],
                     span: Optional[Tuple[int, int]]) -> numpy.ndarray:
    """Indices of the tokens a protocol may remove: those with wordpieces, outside the target's own token or
    span (for an entity: remove the context, watch the entity)."""
    keep = set(range(*span)) if span else ({token} if token is not None else set())
    return numpy.asarray([i for i in range(len(doc)) if alignment[i] and i not in keep], dtype=int)
