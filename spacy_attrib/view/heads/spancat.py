"""`spancat`: label scores (Logistic, or Softmax for ``spancat_singlelabel``) for each span its suggester
proposes. The suggested spans are the plan (perturbed passes score the same spans); a doc's targets are
the spans the component itself predicts, found by its own `set_annotations` (threshold, `max_positive`,
overlap rules) on copies of the docs, so the user's docs are not touched."""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy
import torch
from spacy.tokens import Doc
from thinc.api import torch2xp, xp2torch
from thinc.types import Ragged

from ...targets import LabelsSetting, Target
from ..encoding import EncodedBatch
from .base import Backprop, ThincHead, unannotated_copy


@dataclass
class SuggestedSpans:
    """Per doc of the batch, the (start, end) token offsets of each suggested span, shape (n, 2)."""

    spans: List[numpy.ndarray]


class SpancatHead(ThincHead):
    factories = ("spancat", "spancat_singlelabel")

    @property
    def width(self) -> int:
        """Scores per span: the labels, and the negative label where the component learns one."""
        return len(self.labels) + int(bool(getattr(self.pipe, "add_negative_label", False)))

    def plan(self, batch: EncodedBatch, hidden_states: Callable[[], torch.Tensor]) -> SuggestedSpans:
        suggested = self.pipe.suggester(batch.docs, ops=self.model.ops)
        data = self.model.ops.to_numpy(suggested.dataXd).reshape(-1, 2).astype("int32")
        ends = numpy.cumsum(self.model.ops.to_numpy(suggested.lengths))[:-1]
        return SuggestedSpans(numpy.split(data, ends))

    def model_input(self, batch: EncodedBatch, docs: List[Doc], doc_index: List[int]) -> Any:
        spans = [batch.plan.spans[d] for d in doc_index]
        ops = self.model.ops
        return docs, Ragged(ops.asarray2i(numpy.concatenate(spans)), ops.asarray1i([len(s) for s in spans]))

    def begin_update(self, batch: EncodedBatch, hidden: torch.Tensor, doc_index: List[int]
                     ) -> Tuple[torch.Tensor, Backprop]:
        if not sum(len(batch.plan.spans[d]) for d in doc_index):
            # As spancat's own predict: with no suggested span its model is not run.
            return (torch.zeros((len(doc_index), 0, self.width), device=self.device),
                    lambda d_logits: torch.zeros_like(hidden))
        return super().begin_update(batch, hidden, doc_index)

    def to_logits(self, raw: Any, batch: EncodedBatch, docs: List[Doc], doc_index: List[int]) -> torch.Tensor:
        counts = [len(batch.plan.spans[d]) for d in doc_index]
        raw = xp2torch(raw).float().to(self.device)
        padded = torch.zeros((len(docs), max(counts), raw.shape[1]), device=self.device)
        start = 0
        for j, n in enumerate(counts):
            padded[j, :n] = raw[start:start + n]
            start += n
        return padded

    def to_d_raw(self, d_logits: torch.Tensor, batch: EncodedBatch, docs: List[Doc], doc_index: List[int]) -> Any:
        rows = [d_logits[j, :len(batch.plan.spans[d])] for j, d in enumerate(doc_index)]
        return torch2xp(torch.cat(rows).contiguous())

    def targets(self, batch: EncodedBatch, logits: torch.Tensor, labels: LabelsSetting) -> List[List[Target]]:
        spans = batch.plan.spans
        copies = [unannotated_copy(doc) for doc in batch.docs]
        probabilities = self.probabilities(logits).detach().cpu().numpy()
        suggested = Ragged(numpy.concatenate(spans), numpy.asarray([len(s) for s in spans], dtype="int32"))
        scores = numpy.concatenate([probabilities[d, :len(s)] for d, s in enumerate(spans)])
        self.pipe.set_annotations(copies, (suggested, scores))
        targets: List[List[Target]] = []
        for d, copy in enumerate(copies):
            position = {(int(s), int(e)): i for i, (s, e) in enumerate(spans[d])}
            predicted: Dict[Tuple[int, int], List[int]] = {}
            for span in copy.spans[self.pipe.key]:
                predicted.setdefault((span.start, span.end), []).append(self.labels.index(span.label_))
            doc_targets = []
            for extent, predicted_labels in predicted.items():
                chosen = (predicted_labels if labels == "predicted"
                          else self.chosen_labels(logits[d, position[extent]], labels))
                doc_targets.extend(Target(self.labels[k], k, position=position[extent], span=extent) for k in chosen)
            targets.append(doc_targets)
        return targets

    def position(self, plan: SuggestedSpans, d: int, token: Optional[int], span: Optional[Tuple[int, int]],
                 label: str) -> Optional[int]:
        hits = numpy.flatnonzero((plan.spans[d] == numpy.asarray(span)).all(axis=1)) if span else []
        return int(hits[0]) if len(hits) else None
