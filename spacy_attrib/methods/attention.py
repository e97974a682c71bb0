"""Attention as attribution: raw attention, attention rollout, layer-wise attention tracing.

Each method turns the attention of one forward pass into a flow matrix F per transformer row, (T, T), whose
row q is the distribution of a unit of attention leaving position q over the input positions; a target's
wordpiece scores are q·F for its query distribution q (below).

- Raw attention: F = mean over `heads` of A_h^(l) at one `layer`.
- Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"): per layer the
  head-averaged attention Ā^(l) with the residual connection as an identity term, Â^(l) = 0.5·Ā^(l) + 0.5·I,
  rows renormalised; F = Ã = Â^(L) ⋯ Â^(1).
- Layer-wise attention tracing, LAT (Wu & Ong 2021, "On Explaining Your Explanations of BERT", code
  `frankaging/BERT_LRP`): per head h a one-hot a_h = e_q, traced down the layers with no residual term,
  a_h ← a_h · A_h^(l) for l = L … 1, head h of a layer chained to head h of the layer below; the score is
  Σ_h a_h. So F = Σ_h A_h^(L) ⋯ A_h^(1), and each row of F sums to the number of heads.

Query. For doc-level targets (textcat, textcat_multilabel), `query` is ``"cls"`` (a one-hot on the first
real wordpiece of each row, [CLS] for BERT) or ``"mean"`` (uniform over the row's real positions). spaCy's
text classifiers do not read [CLS]: they pool the vectors of the doc's tokens (the listener mean-pools each
token's wordpieces, ``TextCatReduce`` reduces over the tokens), so the outputs of all positions reach the
prediction alike, and ``"mean"`` is the default of raw attention and rollout. LAT defaults to ``"cls"``, as Wu & Ong trace it. Token and span targets (tagger tokens, ner
entities, spancat spans) are read from their own wordpieces, so their query is uniform over the target's
wordpieces in each row, whatever `query` says; a row (window of a long doc) that holds none of them
gets zeros.

Attention has no target: the scores of a doc's targets differ only by their query, never by their label.
They are still given once per target, as every method gives them, so that evaluation reads them alike.
No gradient is taken, so `attribute_at` changes nothing here; `output` only sets the reported output value.
Every row of a doc gets its own scores (mass 1, or the number of heads for LAT, in each row that holds the
query); the base merges the windows of a long doc.
"""

from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import torch
from pydantic import StrictInt
from spacy.language import Language

from ..align import WordpieceLayout
from ..targets import Target
from ..view import EncodedBatch
from .base import (ASSIGNS, DEFAULT_CONFIG, Aggregation, AttributionComponent, DType, Labels, Output, Site,
                   WordpieceMap)

Heads = Union[Literal["all"], List[StrictInt]]
Query = Literal["cls", "mean"]


# -- the algorithms, on attention tensors --------------------------------------------------------------
def head_mean(attention: torch.Tensor, heads: Union[str, Sequence[int]] = "all") -> torch.Tensor:
    """The mean over `heads` (``"all"`` or indices) of attention (..., heads, T, T), shaped (..., T, T)."""
    if heads == "all":
        return attention.mean(-3)
    n_heads = attention.shape[-3]
    outside = [h for h in heads if not 0 <= h < n_heads]
    if outside:
        raise ValueError(f"heads {outside} out of range: the model has {n_heads} attention heads")
    return attention[..., list(heads), :, :].mean(-3)


def rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout Ã = Â^(L) ⋯ Â^(1), Â^(l) = rownorm(0.5·Ā^(l) + 0.5·I), from the head-averaged
    attention Ā^(l) of each layer, bottom layer first, each (..., T, T). Row q of Ã is the flow from
    position q at the top to the input positions; rows of row-stochastic inputs stay row-stochastic."""
    flow = None
    for attention in attentions:
        identity = torch.eye(attention.shape[-1], dtype=attention.dtype, device=attention.device)
        residual = 0.5 * attention + 0.5 * identity
        residual = residual / residual.sum(-1, keepdim=True)
        flow = residual if flow is None else residual @ flow
    if flow is None:
        raise ValueError("rollout needs the attention of at least one layer")
    return flow


def trace(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """LAT's flow Σ_h A_h^(L) ⋯ A_h^(1) from each layer's per-head attention, bottom layer first, each
    (..., heads, T, T); shaped (..., T, T). Row q holds Σ_h a_h for the trace that starts from a_h = e_q:
    a_h ← a_h · A_h^(l) for l = L … 1, no residual term, head h chained to head h."""
    flow = None
    for attention in attentions:
        flow = attention if flow is None else attention @ flow
    if flow is None:
        raise ValueError("trace needs the attention of at least one layer")
    return flow.sum(-3)


def layer_attention(attentions: Sequence[torch.Tensor], layer: int) -> torch.Tensor:
    """The attention of `layer` (0-based; negative counts from the last), with a clear error outside."""
    if not -len(attentions) <= layer < len(attentions):
        raise ValueError(f"layer {layer} out of range: the model has {len(attentions)} layers "
                         f"(0..{len(attentions) - 1}, or negative from the last)")
    return attentions[layer]


# -- the components -------------------------------------------------------------------------------------
class AttentionMethod(AttributionComponent):
    """One forward pass with the attention captured and reduced to a flow matrix per row (`flow`); each
    target's scores are its query distribution times its row's flow matrix."""

    def flow(self, attentions: Sequence[torch.Tensor]) -> torch.Tensor:
        """One call's flow matrices (rows, T, T) from its attention, a tuple over layers of (rows, heads, T, T)."""
        raise NotImplementedError

    def explain(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        view = self.view
        with view.frozen(), torch.no_grad(), view.capturing_attention(self.flow) as captured:
            output = view.forward(batch, max_rows=self.cfg["internal_batch_size"])
        flows = captured.values(batch.width)
        targets = self.targets(output, batch)
        per_slot = [torch.zeros(batch.input_ids.shape, device=flows.device)
                    for _ in range(max((len(t) for t in targets), default=0))]
        for d, doc_targets in enumerate(targets):
            start, n = batch.row_starts[d], batch.rows[d]
            real = batch.attention_mask[start:start + n].float()
            anchored = [t.token is not None or t.span is not None for t in doc_targets]
            layout = batch.layout(d) if any(anchored) else None
            for slot, target in enumerate(doc_targets):
                query = target_query(real, layout, target) if anchored[slot] else self.doc_query(real)
                per_slot[slot][start:start + n] = torch.einsum("rq,rqk->rk", query, flows[start:start + n])
        return self.maps(batch, targets, output, per_slot)

    def doc_query(self, real: torch.Tensor) -> torch.Tensor:
        """The query distribution of a doc-level target in each row, (rows, T), from the rows' attention
        mask: uniform over the real positions (``mean``) or a one-hot on the first of them (``cls``)."""
        if self.cfg["query"] == "mean":
            return real / real.sum(-1, keepdim=True)
        first = torch.zeros_like(real)
        first[torch.arange(real.shape[0], device=real.device), real.argmax(-1)] = 1.0
        return first


def target_query(real: torch.Tensor, layout: WordpieceLayout, target: Target) -> torch.Tensor:
    """The query distribution of a token or span target in each row, (rows, T): uniform over the target's
    wordpieces in that row, zero in rows that hold none of them."""
    tokens = [target.token] if target.token is not None else range(*target.span)
    pieces = [piece for token in tokens for piece in layout.alignment[token]]
    query = torch.zeros_like(real).view(-1)
    query[torch.as_tensor(layout.positions[pieces], dtype=torch.long, device=real.device)] = 1.0
    query = query.view(real.shape)
    return query / query.sum(-1, keepdim=True).clamp_min(1.0)


class RawAttention(AttentionMethod):
    method_name = "attention"

    def flow(self, attentions: Sequence[torch.Tensor]) -> torch.Tensor:
        return head_mean(layer_attention(attentions, self.cfg["layer"]), self.cfg["heads"])


class AttentionRollout(AttentionMethod):
    method_name = "attention_rollout"

    def flow(self, attentions: Sequence[torch.Tensor]) -> torch.Tensor:
        return rollout([head_mean(attention, self.cfg["heads"]) for attention in attentions])


class LayerwiseAttentionTracing(AttentionMethod):
    method_name = "lat"

    def flow(self, attentions: Sequence[torch.Tensor]) -> torch.Tensor:
        return trace(attentions)


# -- factories ------------------------------------------------------------------------------------------
def check_heads(heads: Heads) -> None:
    if heads != "all" and (not heads or len(set(heads)) != len(heads) or min(heads) < 0):
        raise ValueError(f"heads must be 'all' or a non-empty list of distinct head indices (>= 0), got {heads!r}")


ATTENTION_CONFIG: Dict[str, Any] = {**DEFAULT_CONFIG, "layer": -1, "heads": "all", "query": "mean"}
ROLLOUT_CONFIG: Dict[str, Any] = {**DEFAULT_CONFIG, "heads": "all", "query": "mean"}
LAT_CONFIG: Dict[str, Any] = {**DEFAULT_CONFIG, "query": "cls"}


@Language.factory("attr_attention", default_config=ATTENTION_CONFIG, assigns=ASSIGNS)
def make_attention(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
                   aggregation: Aggregation, attribute_at: Site, batch_size: int, internal_batch_size: int,
                   dtype: DType, key: Optional[str], layer: StrictInt, heads: Heads, query: Query) -> RawAttention:
    """Raw attention of `layer` (default the last; negative from the end), averaged over `heads`, from the
    `query` (``mean``, default, or ``cls``; token and span targets use their own wordpieces)."""
    check_heads(heads)
    return RawAttention(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                        attribute_at=attribute_at, batch_size=batch_size, internal_batch_size=internal_batch_size,
                        dtype=dtype, key=key, layer=layer, heads=heads, query=query)


@Language.factory("attr_attention_rollout", default_config=ROLLOUT_CONFIG, assigns=ASSIGNS)
def make_attention_rollout(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
                           aggregation: Aggregation, attribute_at: Site, batch_size: int, internal_batch_size: int,
                           dtype: DType, key: Optional[str], heads: Heads, query: Query) -> AttentionRollout:
    """Attention rollout over all layers (Abnar & Zuidema 2020) of the attention averaged over `heads`,
    read from the `query` (``mean``, default, or ``cls``; token and span targets use their own wordpieces)."""
    check_heads(heads)
    return AttentionRollout(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                            attribute_at=attribute_at, batch_size=batch_size,
                            internal_batch_size=internal_batch_size, dtype=dtype, key=key, heads=heads, query=query)


@Language.factory("attr_lat", default_config=LAT_CONFIG, assigns=ASSIGNS)
def make_lat(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
             aggregation: Aggregation, attribute_at: Site, batch_size: int, internal_batch_size: int,
             dtype: DType, key: Optional[str], query: Query) -> LayerwiseAttentionTracing:
    """Wu & Ong's layer-wise attention tracing from the `query` (``cls``, default, as in the paper's code,
    or ``mean``; token and span targets use their own wordpieces); scores sum to the number of heads."""
    return LayerwiseAttentionTracing(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                                     attribute_at=attribute_at, batch_size=batch_size,
                                     internal_batch_size=internal_batch_size, dtype=dtype, key=key, query=query)
