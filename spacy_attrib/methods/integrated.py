"""Integrated gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks").

    IG_i = Σ_h (x − x′)_ih · ∫₀¹ ∂f(x′ + α(x − x′))/∂x_ih dα

with the integral replaced by a quadrature over `n_steps` points (Gauss–Legendre, as Captum does by
default, or the trapezoid rule). Completeness says Σ_i IG_i = f(x) − f(x′); the gap
δ = Σ_i IG_i − (f(x) − f(x′)) is reported with every result (``extras["delta"]``, and the relative gap
``|δ| / |f(x) − f(x′)|``), so a user can tell whether `n_steps` was enough.

The baseline x′ is the attribution-site value of a reference text of the same length: ``pad`` keeps
[CLS]/[SEP] and puts [PAD] everywhere else (the common choice for BERT); ``mask`` and ``unk`` use [MASK]
or [UNK]; ``zero`` is the zero tensor. Steps of several docs go through the transformer together, at most
`internal_batch_size` rows per forward/backward.
"""

from typing import Any, Dict, List, Optional, Tuple, Union

import numpy
import torch
from spacy.language import Language

from ..differentiable import DifferentiableView, EncodedBatch
from ..targets import LabelsSetting, Target
from .base import DEFAULT_CONFIG, AttributionComponent, WordpieceMap, instance_chunks, slot_gradients

QUADRATURES = ("gausslegendre", "riemann_trapezoid")
BASELINES = ("pad", "mask", "unk", "zero")


def quadrature(n_steps: int, method: str) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """Points α in [0, 1] and weights for ∫₀¹ g(α) dα ≈ Σ_k w_k g(α_k)."""
    if method == "gausslegendre":
        nodes, weights = numpy.polynomial.legendre.leggauss(n_steps)
        return 0.5 * (nodes + 1), 0.5 * weights
    if method == "riemann_trapezoid":
        if n_steps < 2:
            raise ValueError("riemann_trapezoid needs at least 2 steps")
        # The trapezoid rule proper: the weights sum to 1 (Captum's variant sums to 1 − 1/n).
        weights = numpy.full(n_steps, 1.0 / (n_steps - 1))
        weights[[0, -1]] /= 2
        return numpy.linspace(0, 1, n_steps), weights
    raise ValueError(f"method must be one of {QUADRATURES}, got {method!r}")


def baseline_inputs(view: DifferentiableView, batch: EncodedBatch, inputs: torch.Tensor, kind: str) -> torch.Tensor:
    """The baseline x′ at the attribution site, for every row of the batch."""
    if kind == "zero":
        return torch.zeros_like(inputs)
    if kind not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}")
    ids = batch.input_ids.clone()
    structural = torch.isin(ids, torch.tensor(view.structural_ids(), device=ids.device))
    ids[batch.attention_mask.bool() & ~structural] = view.token_id(kind)
    return view.capture(batch, ids)


class IntegratedGradients(AttributionComponent):
    method_name = "integrated_gradients"

    def explain(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        view, cfg = self.view, self.cfg
        alphas, weights = quadrature(cfg["n_steps"], cfg["method"])
        with view.frozen():
            inputs = view.capture(batch)
            baseline = baseline_inputs(view, batch, inputs, cfg["baseline"])
            with torch.no_grad():
                output = view.forward(batch, inputs)
                baseline_output = view.forward(batch, baseline)
            targets = self.targets(output, batch)
            grads = self.integrated_gradients(batch, inputs, baseline, targets, alphas, weights)
        per_slot = [((inputs - baseline) * g).sum(-1) for g in grads]
        return self.maps(batch, targets, output, per_slot, self.completeness(batch, output, baseline_output, per_slot, targets))

    def integrated_gradients(self, batch: EncodedBatch, inputs: torch.Tensor, baseline: torch.Tensor,
                             targets: List[List[Target]], alphas: numpy.ndarray, weights: numpy.ndarray
                             ) -> List[torch.Tensor]:
        """Σ_k w_k ∂f(x′ + α_k(x − x′))/∂x per target slot, shaped like `inputs`."""
        view = self.view
        n_slots = max((len(t) for t in targets), default=0)
        totals = [torch.zeros_like(inputs) for _ in range(n_slots)]
        alpha = torch.tensor(alphas, dtype=inputs.dtype, device=inputs.device)
        weight = torch.tensor(weights, dtype=inputs.dtype, device=inputs.device)
        for chunk in instance_chunks(batch, len(alphas), self.cfg["internal_batch_size"]):
            a = alpha[chunk.row_points].view(-1, 1, 1)
            start, end = baseline[chunk.rows], inputs[chunk.rows]
            path_point = (start + a * (end - start)).requires_grad_(True)
            chunk_output = view.forward(batch, path_point, doc_index=chunk.doc_index)
            for slot, grad in slot_gradients(chunk_output, targets):
                totals[slot].index_add_(0, chunk.rows, grad * weight[chunk.row_points].view(-1, 1, 1))
        return totals

    @staticmethod
    def completeness(batch: EncodedBatch, output, baseline_output, per_slot: List[torch.Tensor],
                     targets: List[List[Target]]):
        """δ = Σ IG − (f(x) − f(x′)) for each doc and target, with the relative gap."""

        def extras(d: int, target: Target) -> Dict[str, Any]:
            slot = targets[d].index(target)
            start, n = batch.row_starts[d], batch.rows[d]
            total = float(per_slot[slot][start:start + n].sum())
            at = (d, target.position, target.label_index)
            difference = float(output.scores[at] - baseline_output.scores[at])
            delta = total - difference
            return {"delta": delta, "relative_delta": abs(delta) / max(abs(difference), 1e-12),
                    "baseline_output": float(baseline_output.scores[at])}

        return extras


IG_CONFIG: Dict[str, Any] = {**DEFAULT_CONFIG, "n_steps": 50, "method": "gausslegendre", "baseline": "pad",
                             "internal_batch_size": 128}


@Language.factory("attr_integrated_gradients", default_config=IG_CONFIG)
def make_integrated_gradients(nlp: Language, name: str, target: Optional[str], labels: LabelsSetting,
                              output: str, aggregation: str, attribute_at: Union[str, int], batch_size: int,
                              dtype: str, key: Optional[str], n_steps: int, method: str, baseline: str,
                              internal_batch_size: int) -> IntegratedGradients:
    """Integrated gradients from a `baseline` (pad, mask, unk, zero) over `n_steps` quadrature points."""
    quadrature(n_steps, method)
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if internal_batch_size < 1:
        raise ValueError("internal_batch_size must be at least 1")
    return IntegratedGradients(nlp, name, target=target, labels=labels, output=output,
                               aggregation=aggregation, attribute_at=attribute_at, batch_size=batch_size,
                               dtype=dtype, key=key, n_steps=n_steps, method=method, baseline=baseline,
                               internal_batch_size=internal_batch_size)
