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

``rule = "wu_ong"``: the rule set of Wu & Ong 2021 ("On Explaining Your Explanations of BERT", code
`frankaging/BERT_LRP`), layer by layer from the last encoder layer to the embedding output:

- linear layers (weights W, bias b, input a): with W⁺, W⁻ (and b⁺, b⁻) the positive and negative parts,
  c± = (R / (a W±ᵀ + b± ± ε)) W±, R_in = a ⊙ (½ c⁺ + ½ c⁻), then |R_in| rescaled so that its sum over the
  hidden units of each position equals the sum of R_out there (the code's `rescale_lrp` on 3-D tensors);
- residual + LayerNorm blocks, out = LN(dense(x) + residual): both the residual and the dense output get the
  vector-Jacobian product of LN with R (the partial derivative along each branch of the sum); the dense
  branch continues through the linear rule; the two are added;
- GELU: no rule of its own (the relevance of the intermediate layer's output passes to its dense layer);
- self-attention ("quick" detour): the VJP of the context w.r.t. the query, key and value projections,
  seeded with R, each through its projection's linear rule, summed;
- embeddings: identity; a wordpiece's score is Σ_d |R_d| (non-negative).

Their classifier (pooler + linear, seeded with z_c · onehot(c)) is a thinc head here: relevance enters the
transformer output as gradient × hidden state of the explained output at the last layer, R = h ⊙ ∂f/∂h, exact
LRP-0 for a mean-pooled linear head (TextCatReduce, the tagger) and its first-order share otherwise. The
relevance is taken at the embedding output (``attribute_at = "embeddings"``).
"""

from typing import Dict, List, Literal, Optional

import torch
from spacy.language import Language

from ..targets import slot_count, slot_values
from ..view import EncodedBatch
from ..view.internals import PARTS, Record, recording
from ..view.transformer import pad_width
from .base import (ASSIGNS, DEFAULT_CONFIG, Aggregation, AttributionComponent, DType, Labels, Output, Site,
                   WordpieceMap, check_choice, instance_chunks, slot_gradients)

RULES = ("conservative", "wu_ong")
Rule = Literal["conservative", "wu_ong"]
EPSILON = 1e-7  # Wu & Ong's ε of the linear rule and of the rescaling
Part = Literal["attention", "layer_norm", "activation"]


class LayerwiseRelevance(AttributionComponent):
    """LRP: one forward pass and one backward pass per target slot, batched over the docs."""

    method_name = "lrp"
    uses_gradients = True

    def explain(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        return self.conservative(batch) if self.cfg["rule"] == "conservative" else self.wu_ong(batch)

    def conservative(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        """R = x ⊙ ∂̃f/∂x at the attribution site (Ali et al. 2022), summed over hidden units."""
        view = self.view
        with view.frozen(), view.detached_nonlinearities(self.cfg["detach"]):
            output = view.forward(batch, max_rows=self.cfg["internal_batch_size"])
            targets = self.targets(output, batch)
            # The backward passes stay inside the block: checkpointed chunks are recomputed there.
            per_slot = [(grad * output.inputs).sum(-1) for _, grad in slot_gradients(output, targets)]
        return self.maps(batch, targets, output, per_slot)

    def wu_ong(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        """Wu & Ong's rules, layer by layer; docs in chunks of at most `internal_batch_size` rows."""
        view = self.view
        with view.frozen(), torch.no_grad():
            output = view.forward(batch)
        targets = self.targets(output, batch)
        n_slots = slot_count(targets)
        per_slot = [torch.zeros(batch.input_ids.shape, device=output.inputs.device) for _ in range(n_slots)]
        seeded = [torch.zeros(len(batch.docs)) for _ in range(n_slots)]
        for chunk in instance_chunks(batch, range(len(batch.docs)), self.cfg["internal_batch_size"]):
            with view.frozen(), recording(view.hf_model) as layers:
                chunk_output = view.forward(batch, doc_index=chunk.doc_index)
                last = layers[-1]["output_norm"].output
                for slot in range(n_slots):
                    value = slot_values(chunk_output.scores, chunk_output.doc_index, targets, slot).sum()
                    (grad,) = torch.autograd.grad(value, last, retain_graph=True)
                    relevance = grad * last
                    for d, start in zip(chunk.doc_index, chunk.offsets):
                        seeded[slot][d] = float(relevance[start:start + batch.rows[d]].detach().sum())
                    for layer in reversed(layers):
                        relevance = layer_relevance(layer, relevance)
                    per_slot[slot][chunk.rows] = pad_width(relevance.abs().sum(-1, keepdim=True),
                                                           batch.width)[..., 0].detach()
        return self.maps(batch, targets, output, per_slot,
                         lambda d, target: {"seeded_relevance": float(seeded[targets[d].index(target)][d])})


def layer_relevance(layer: Dict[str, Record], relevance: torch.Tensor) -> torch.Tensor:
    """Relevance at an encoder layer's input from the relevance at its output (Wu & Ong's rules)."""
    attention_output, residual = residual_block(layer["output_dense"], layer["output_norm"], relevance)
    # GELU has no rule: the output dense layer's input relevance is the intermediate dense layer's output's.
    attention_output = attention_output + linear_rule(layer["intermediate"], residual)
    context, hidden = residual_block(layer["attention_dense"], layer["attention_norm"], attention_output)
    projections = [layer[role] for role in ("query", "key", "value")]
    seeds = torch.autograd.grad(layer["attention"].output, [p.output for p in projections], grad_outputs=context,
                                retain_graph=True)
    return hidden + sum(linear_rule(p, seed) for p, seed in zip(projections, seeds))


def residual_block(dense: Record, norm: Record, relevance: torch.Tensor):
    """out = LN(dense(x) + residual): (relevance at the residual input, at the dense layer's input)."""
    (through_norm,) = torch.autograd.grad(norm.output, norm.input, grad_outputs=relevance, retain_graph=True)
    return through_norm, linear_rule(dense, through_norm)


def linear_rule(linear: Record, relevance: torch.Tensor) -> torch.Tensor:
    """Wu & Ong's α = β = ½ rule for a Linear layer, then |R_in| rescaled to R_out's sum per position."""
    a, weight, bias = linear.input.detach(), linear.module.weight, linear.module.bias
    parts = []
    for sign in (1, -1):
        w = weight.clamp(min=0) if sign > 0 else weight.clamp(max=0)
        b = bias.clamp(min=0) if sign > 0 else bias.clamp(max=0)
        parts.append((relevance / (a @ w.T + b + sign * EPSILON)) @ w)
    contribution = (a * (0.5 * parts[0] + 0.5 * parts[1])).abs()
    scale = (relevance.sum(-1, keepdim=True) + EPSILON) / (contribution.sum(-1, keepdim=True) + EPSILON)
    return contribution * scale


LRP_CONFIG = {**DEFAULT_CONFIG, "output": "logit", "rule": "conservative", "detach": list(PARTS)}


@Language.factory("attr_lrp", default_config=LRP_CONFIG, assigns=ASSIGNS)
def make_lrp(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
             aggregation: Aggregation, attribute_at: Site, batch_size: int, internal_batch_size: int,
             dtype: DType, key: Optional[str], rule: Rule, detach: List[Part]) -> LayerwiseRelevance:
    """Layer-wise relevance propagation (`rule`: ``conservative``, Ali et al. 2022, or ``wu_ong``, Wu & Ong
    2021); `detach`: the parts the conservative rule treats as constants (``attention``, ``layer_norm``,
    ``activation``; default all)."""
    check_choice("rule", rule, RULES)
    if rule == "wu_ong" and attribute_at not in ("embeddings", 0):
        raise ValueError(f"rule 'wu_ong' propagates relevance to the embedding output; attribute_at must be "
                         f"'embeddings', got {attribute_at!r}")
    for part in detach:
        check_choice("detach", part, PARTS)
    return LayerwiseRelevance(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                              attribute_at=attribute_at, batch_size=batch_size,
                              internal_batch_size=internal_batch_size, dtype=dtype, key=key, rule=rule,
                              detach=list(detach))
