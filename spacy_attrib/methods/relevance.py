"""Layer-wise relevance propagation (LRP) through the transformer.

``rule = "conservative"`` (default): Ali et al. 2022, "XAI for Transformers: Better Explanations through
Conservative Propagation" (ICML). Gradient × input, with the attention probabilities (AH-rule) and
LayerNorm's standard deviation (LN-rule) treated as constants in the backward pass, and the feed-forward
non-linearity f passed by the identity rule (f(x) = x · (f(x)/x), the ratio a constant; the authors' code has
no feed-forward block, AttnLRP treats element-wise non-linearities this way). The transformer is then linear in
the attribution-site values x apart from its biases, and the relevance of site value x_ih is

    R_ih = x_ih · ∂̃f/∂x_ih        (∂̃: the gradient with those parts detached)

which is LRP-0 through every linear map. It conserves relevance: Σ_ih R_ih = f(x) − (relevance absorbed by
the biases, LayerNorm's β included, and by the head's own layers where they are not linear). The spaCy head is
a thinc model differentiated as it is (for TextCatReduce, mean pooling then a linear layer: exactly linear).
The explained output defaults to the ``logit`` (LRP explains a score; the log-probability is not linear in
it). `detach` chooses the parts; with none, the result is plain gradient × input (the ablation of the paper).
A wordpiece's score is Σ_h R_ih (signed).
"""

from typing import List, Literal, Optional

from spacy.language import Language

from ..view import EncodedBatch
from ..view.internals import PARTS
from .base import (ASSIGNS, DEFAULT_CONFIG, Aggregation, AttributionComponent, DType, Labels, Output, Site,
                   WordpieceMap, check_choice, slot_gradients)

RULES = ("conservative",)
Rule = Literal["conservative"]
Part = Literal["attention", "layer_norm", "activation"]


class LayerwiseRelevance(AttributionComponent):
    """LRP: one forward pass and one backward pass per target slot, batched over the docs."""

    method_name = "lrp"
    uses_gradients = True

    def explain(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        return self.conservative(batch)

    def conservative(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        """R = x ⊙ ∂̃f/∂x at the attribution site (Ali et al. 2022), summed over hidden units."""
        view = self.view
        with view.frozen(), view.detached_nonlinearities(self.cfg["detach"]):
            output = view.forward(batch, max_rows=self.cfg["internal_batch_size"])
            targets = self.targets(output, batch)
            # The backward passes stay inside the block: checkpointed chunks are recomputed there.
            per_slot = [(grad * output.inputs).sum(-1) for _, grad in slot_gradients(output, targets)]
        return self.maps(batch, targets, output, per_slot)


LRP_CONFIG = {**DEFAULT_CONFIG, "output": "logit", "rule": "conservative", "detach": list(PARTS)}


@Language.factory("attr_lrp", default_config=LRP_CONFIG, assigns=ASSIGNS)
def make_lrp(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
             aggregation: Aggregation, attribute_at: Site, batch_size: int, internal_batch_size: int,
             dtype: DType, key: Optional[str], rule: Rule, detach: List[Part]) -> LayerwiseRelevance:
    """Layer-wise relevance propagation (`rule`: ``conservative``, Ali et al. 2022); `detach`: the parts the
    conservative rule treats as constants (``attention``, ``layer_norm``, ``activation``; default all)."""
    check_choice("rule", rule, RULES)
    for part in detach:
        check_choice("detach", part, PARTS)
    return LayerwiseRelevance(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                              attribute_at=attribute_at, batch_size=batch_size,
                              internal_batch_size=internal_batch_size, dtype=dtype, key=key, rule=rule,
                              detach=list(detach))
