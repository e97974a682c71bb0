"""The `tagger`: a Softmax over tags for every token, so one position per token (padded past a doc's
length). Each token's explanation is stored on the token."""

from typing import Any, List, Optional, Tuple

import torch
from spacy.tokens import Doc
from thinc.api import torch2xp, xp2torch

from ...targets import LabelsSetting, Target
from ..encoding import EncodedBatch
from .base import ThincHead


class TaggerHead(ThincHead):
    factories = ("tagger",)

    def to_logits(self, raw: Any, batch: EncodedBatch, docs: List[Doc], doc_index: List[int]) -> torch.Tensor:
        width = max([len(doc) for doc in docs] + [1])
        padded = torch.zeros((len(docs), width, len(self.labels)), device=self.device)
        for j, doc_scores in enumerate(raw):
            if len(doc_scores):
                padded[j, :len(doc_scores)] = xp2torch(doc_scores).float().to(self.device)
        return padded

    def to_d_raw(self, d_logits: torch.Tensor, batch: EncodedBatch, docs: List[Doc], doc_index: List[int]) -> Any:
        d_xp = torch2xp(d_logits)
        return [d_xp[j, :len(doc)] for j, doc in enumerate(docs)]

    def targets(self, batch: EncodedBatch, logits: torch.Tensor, labels: LabelsSetting) -> List[List[Target]]:
        return [[Target(self.labels[k], k, position=i, token=i)
                 for i in range(len(doc)) for k in self.chosen_labels(logits[d, i], labels)]
                for d, doc in enumerate(batch.docs)]

    def position(self, plan: Any, d: int, token: Optional[int], span: Optional[Tuple[int, int]], label: str
                 ) -> Optional[int]:
        return token
