"""Doc-level classifiers: `textcat` (exclusive, Softmax) and `textcat_multilabel` (Logistic).

One position per doc. The quickstart's accuracy preset, ``spacy.TextCatEnsemble.v2``, concatenates a
transformer branch with a bag-of-words branch (``TextCatBOW``: hashed n-gram features of the doc's
words). No gradient reaches the bag-of-words branch: gradient methods explain the transformer branch,
with the bag-of-words branch held at its value for the doc (it is constant along any path in the
transformer's input, so completeness holds for what is explained). Perturbation methods that replace
wordpieces leave the spaCy tokens it reads in place, so the same holds for them; deleting tokens reaches
both branches. Results say so in ``extras``.
"""

from typing import Any, Dict, List

import torch
from spacy.tokens import Doc
from thinc.api import torch2xp, xp2torch

from ...targets import LabelsSetting, Target
from ..encoding import EncodedBatch
from .base import ThincHead


class ClassifierHead(ThincHead):
    factories = ("textcat", "textcat_multilabel")

    def notes(self, reaching: str) -> Dict[str, str]:
        if any(node.name.startswith("sparse_linear") for node in self.model.walk()):
            why = ("no gradient reaches it" if reaching == "gradient" else
                   "it reads the doc's spaCy tokens, which replacing wordpieces leaves in place (removal 'delete' "
                   "removes them from both branches)")
            return {"not_attributed": f"the bag-of-words branch (TextCatBOW) of the ensemble: {why}; held at its "
                                      "value for the doc; scores explain the transformer branch"}
        return {}

    def to_logits(self, raw: Any, batch: EncodedBatch, docs: List[Doc], doc_index: List[int]) -> torch.Tensor:
        return xp2torch(raw).float().unsqueeze(1).to(self.device)

    def to_d_raw(self, d_logits: torch.Tensor, batch: EncodedBatch, docs: List[Doc], doc_index: List[int]) -> Any:
        return torch2xp(d_logits[:, 0].contiguous())

    def targets(self, batch: EncodedBatch, logits: torch.Tensor, labels: LabelsSetting) -> List[List[Target]]:
        threshold = float(self.pipe.cfg.get("threshold", 0.5))
        return [[Target(self.labels[k], k) for k in self.chosen_labels(logits[d, 0], labels, threshold)]
                if len(doc) else [] for d, doc in enumerate(batch.docs)]
