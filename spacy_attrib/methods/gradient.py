"""Gradient attribution: saliency, gradient × input, SmoothGrad / VarGrad.

- Saliency (Simonyan et al. 2014; for BERT, Wu & Ong 2021 "gradient sensitivity"): the size of
  ∂f/∂x_i over the hidden dimension: L2 norm by default, its square (Wu & Ong's variant), or the signed sum.
- Gradient × input (Shrikumar et al. 2016; Wu & Ong 2021): Σ_h x_ih · ∂f/∂x_ih (signed).
- SmoothGrad (Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise"): the mean of the base
  method's element-wise map over `n_samples` copies x + ε, ε ~ N(0, σ²), with σ = `noise_level` ×
  (max(x) − min(x)) over the doc's inputs, as the paper sets it; VarGrad (Adebayo et al. 2018) takes the
  variance instead (`var = true`). The noise of a doc depends only on `seed` and the doc's text, so
  results do not depend on how docs are batched.
"""

from typing import Any, Dict, List, Literal, Optional

import torch
from spacy.language import Language
from spacy.tokens import Doc

from ..view import EncodedBatch
from .base import (ASSIGNS, DEFAULT_CONFIG, Aggregation, AttributionComponent, DType, Labels, Output, Site,
                   WordpieceMap, doc_noise, doc_seed, instance_chunks, slot_gradients)


def reduce_hidden(values: torch.Tensor, how: str) -> torch.Tensor:
    """One score per wordpiece from an element-wise map (..., hidden)."""
    if how == "l2":
        return values.norm(dim=-1)
    if how == "l2_squared":
        return (values ** 2).sum(-1)
    return values.sum(-1)


def elementwise_map(base: str, grad: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """The element-wise attribution of a gradient method: the gradient, or gradient × input."""
    return grad if base == "saliency" else grad * inputs


class GradientMethod(AttributionComponent):
    """One forward and one backward per target slot: the element-wise map reduced over hidden units."""

    uses_gradients = True

    def explain(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        view = self.view
        with view.frozen():
            output = view.forward(batch, max_rows=self.cfg["internal_batch_size"])
            targets = self.targets(output, batch)
            per_slot = [reduce_hidden(elementwise_map(self.method_name, grad, output.inputs),
                                      self.cfg["reduction"])
                        for _, grad in slot_gradients(output, targets)]
        return self.maps(batch, targets, output, per_slot)


class Saliency(GradientMethod):
    method_name = "saliency"


class GradientXInput(GradientMethod):
    method_name = "gradient_x_input"


class SmoothGrad(AttributionComponent):
    method_name = "smoothgrad"
    uses_gradients = True

    def explain(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        view, cfg = self.view, self.cfg
        n_samples = cfg["n_samples"]
        with view.frozen():
            inputs = view.capture(batch)
            with torch.no_grad():
                output = view.forward(batch, inputs, max_rows=cfg["internal_batch_size"])
            targets = self.targets(output, batch)
            # One generator per doc, seeded by the doc alone; samples are drawn in order, chunk by chunk,
            # so memory stays bounded by internal_batch_size and the noise does not depend on batching.
            generators = [self.noise_generator(batch.docs[d], inputs.device) for d in range(len(batch.docs))]
            sigmas = [self.sigma(batch, inputs, d) for d in range(len(batch.docs))]
            n_slots = max((len(t) for t in targets), default=0)
            total = [torch.zeros_like(inputs) for _ in range(n_slots)]
            total_sq = [torch.zeros_like(inputs) for _ in range(n_slots)]
            samples = [d for d in range(len(batch.docs)) if targets[d] for _ in range(n_samples)]
            for chunk in instance_chunks(batch, samples, cfg["internal_batch_size"]):
                noise = torch.cat([doc_noise(batch, d, inputs.shape[-1], generators[d], sigmas[d])
                                   for d in chunk.doc_index])
                noisy = (inputs[chunk.rows] + noise).requires_grad_(True)
                chunk_output = view.forward(batch, noisy, doc_index=chunk.doc_index,
                                            max_rows=cfg["internal_batch_size"])
                for slot, grad in slot_gradients(chunk_output, targets):
                    values = elementwise_map(cfg["base"], grad, noisy.detach())
                    total[slot].index_add_(0, chunk.rows, values)
                    total_sq[slot].index_add_(0, chunk.rows, values ** 2)
        per_slot = []
        for mean_sum, sq_sum in zip(total, total_sq):
            mean = mean_sum / n_samples
            values = sq_sum / n_samples - mean ** 2 if cfg["var"] else mean
            per_slot.append(reduce_hidden(values, cfg["reduction"]))
        return self.maps(batch, targets, output, per_slot, lambda d, t: {"sigma": sigmas[d]})

    def sigma(self, batch: EncodedBatch, inputs: torch.Tensor, d: int) -> float:
        """σ = noise_level × (max − min) of the doc's real (non-padding) inputs."""
        start, n = batch.row_starts[d], batch.rows[d]
        real = inputs[start:start + n][batch.attention_mask[start:start + n].bool()]
        return float(self.cfg["noise_level"] * (real.max() - real.min())) if real.numel() else 0.0

    def noise_seed(self, doc: Doc) -> int:
        """The seed of a doc's noise: the `seed` setting and the doc's text, nothing else."""
        return doc_seed(self.cfg["seed"], doc)

    def noise_generator(self, doc: Doc, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.noise_seed(doc))


Reduction = Literal["l2", "l2_squared", "sum"]


@Language.factory("attr_saliency", default_config={**DEFAULT_CONFIG, "reduction": "l2"}, assigns=ASSIGNS)
def make_saliency(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
                  aggregation: Aggregation, attribute_at: Site, batch_size: int, internal_batch_size: int,
                  dtype: DType, key: Optional[str], reduction: Reduction) -> Saliency:
    """Gradient saliency: ‖∂f/∂x_i‖ per wordpiece (`reduction`: l2, l2_squared or signed sum)."""
    return Saliency(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                    attribute_at=attribute_at, batch_size=batch_size, internal_batch_size=internal_batch_size,
                    dtype=dtype, key=key, reduction=reduction)


@Language.factory("attr_gradient_x_input", default_config={**DEFAULT_CONFIG, "reduction": "sum"}, assigns=ASSIGNS)
def make_gradient_x_input(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
                          aggregation: Aggregation, attribute_at: Site, batch_size: int, internal_batch_size: int,
                          dtype: DType, key: Optional[str], reduction: Reduction) -> GradientXInput:
    """Gradient × input: Σ_h x_ih ∂f/∂x_ih per wordpiece (`reduction` sum; l2 or l2_squared for Wu & Ong)."""
    return GradientXInput(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                          attribute_at=attribute_at, batch_size=batch_size,
                          internal_batch_size=internal_batch_size, dtype=dtype, key=key, reduction=reduction)


SMOOTHGRAD_CONFIG: Dict[str, Any] = {**DEFAULT_CONFIG, "base": "gradient_x_input", "reduction": "sum",
                                     "n_samples": 25, "noise_level": 0.1, "var": False, "seed": 0}


@Language.factory("attr_smoothgrad", default_config=SMOOTHGRAD_CONFIG, assigns=ASSIGNS)
def make_smoothgrad(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
                    aggregation: Aggregation, attribute_at: Site, batch_size: int, internal_batch_size: int,
                    dtype: DType, key: Optional[str], base: Literal["saliency", "gradient_x_input"],
                    reduction: Reduction, n_samples: int, noise_level: float, var: bool, seed: int) -> SmoothGrad:
    """SmoothGrad (or VarGrad with `var`) over `n_samples` noisy copies of the input."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    return SmoothGrad(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                      attribute_at=attribute_at, batch_size=batch_size, internal_batch_size=internal_batch_size,
                      dtype=dtype, key=key, base=base, reduction=reduction, n_samples=n_samples,
                      noise_level=noise_level, var=var, seed=seed)
