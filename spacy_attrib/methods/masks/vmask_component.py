"""``attr_vmask``: the keep probabilities of a VMASK-trained transformer (Chen & Ji 2020) as attributions.

A pipeline whose transformer was trained with ``spacy_attrib.VMaskTransformer.v1`` (see `.vmask`) has learned,
for each wordpiece, the probability q_t = softmax(mask logits_t)[keep] with which the mask keeps its embedding
output: the paper's readout of word importance. It depends only on the wordpiece's embedding output (word +
position + type), not on the explained label, so every target of a doc gets the same scores; one no-grad
forward finds the targets and their outputs. A token's score is the mean of its wordpieces' keep
probabilities (the `aggregation` setting, ``mean`` by default here).

The explained model is the VMASK-trained one: unlike every other method, this one needs the model to have
been trained for it (see the README).
"""

from typing import Callable, List, Optional

import torch
from spacy.language import Language

from ...view import EncodedBatch
from ..base import ASSIGNS, DEFAULT_CONFIG, Aggregation, AttributionComponent, DType, Labels, Output, Site, WordpieceMap
from .vmask import VMaskBertModel, keep_probability


class VariationalWordMask(AttributionComponent):
    method_name = "vmask"

    def initialize(self, get_examples: Optional[Callable] = None, *, nlp: Optional[Language] = None) -> None:
        super().initialize(get_examples, nlp=nlp)
        self.vmask_model()

    def vmask_model(self) -> VMaskBertModel:
        """The pipeline's VMASK transformer, with a clear error where it has none."""
        hf_model = self.view.hf_model
        if not isinstance(hf_model, VMaskBertModel):
            model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
            raise ValueError(
                f"attr_vmask reads the keep probabilities of a VMASK transformer, but the pipeline's transformer "
                f"is a {type(hf_model).__name__} (model_type {model_type!r}): train the pipeline with the "
                "architecture spacy_attrib.VMaskTransformer.v1 (configs/masks/textcat_sst2_vmask.cfg)")
        return hf_model

    def explain(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        view, hf_model = self.view, self.vmask_model()
        with view.frozen(), torch.no_grad():
            output = view.forward(batch, max_rows=self.cfg["internal_batch_size"])
            keep = keep_probability(hf_model.vmask(view.capture_at(batch, "embeddings")))
        targets = self.targets(output, batch)
        return self.maps(batch, targets, output, [keep] * max(map(len, targets), default=0))


@Language.factory("attr_vmask", default_config={**DEFAULT_CONFIG, "aggregation": "mean"}, assigns=ASSIGNS)
def make_vmask(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
               aggregation: Aggregation, attribute_at: Site, batch_size: int, internal_batch_size: int,
               dtype: DType, key: Optional[str]) -> VariationalWordMask:
    """The keep probabilities of a VMASK-trained transformer (Chen & Ji 2020), mean over a token's wordpieces."""
    return VariationalWordMask(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                               attribute_at=attribute_at, batch_size=batch_size,
                               internal_batch_size=internal_batch_size, dtype=dtype, key=key)
