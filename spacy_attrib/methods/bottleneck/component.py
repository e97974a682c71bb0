"""`attr_information_bottleneck`: IBA, the per-sample information bottleneck for transformers (Jiang,
Tang, Xin & Lin, Findings of EMNLP 2020, "Inserting Information Bottlenecks for Attribution in
Transformers"; after Schulz et al., ICLR 2020). See `bottleneck` for the maths.

For each target of each doc, a mask α over the doc's rows × positions × hidden units at the output of
encoder layer `layer` starts at `alpha_init` and takes `steps` Adam steps (learning rate `lr`) on

    L(α) = −(1/S) Σ_s log p(target | Z_s) + β · mean_{positions, hidden}(C)

over `n_samples` noise samples Z_s per step (the official code's cross-entropy on the target: the view's
log-probability, mean over samples; C's mean over the doc's real positions and hidden units). A
wordpiece's score is its capacity Σ_h C in nats, taken, as the official code does, from the last step's
forward pass (before the last update). Defaults are the paper's code's (`main.py`): β = 1e-5, lr 1,
10 steps of 10 samples, α₀ = 5 (λ₀ ≈ 0.9933).

Where the bottleneck sits decides what it can single out: it scores where the prediction's information *is*
at that depth. Above the first attention layer a token's information has spread to other positions, and
spaCy's heads mean-pool every position, so on the tests' planted-key textcat (2 layers; one token decides the
label) the key ranks first in 0.075 of docs at the default layer 2 and 0.10 at layer 1 (dataset statistics),
but in all of them at ``layer = 0``, the embedding output, where each position still holds only its own token.

Docs of a batch are optimised together, each with its own α (Adam is element-wise and the loss a sum
over docs, so a doc's result does not depend on the others); each doc's noise comes from a generator
seeded by `seed` and its text. Every target slot (labels="all", each entity, each token for the tagger)
is its own optimisation.
"""

from itertools import islice
from typing import Any, Callable, Dict, Iterable, List, Literal, Optional, Tuple, Union

import torch
from pydantic import StrictInt
from spacy.language import Language
from spacy.tokens import Doc
from spacy.util import minibatch

from ...targets import Target, slot_count, slot_values
from ...view import EncodedBatch, encoder_depth
from ..base import (ASSIGNS, DEFAULT_CONFIG, Aggregation, AttributionComponent, DType, Labels, Output,
                    WordpieceMap, check_choice, doc_noise, doc_seed, instance_chunks)
from .bottleneck import bottleneck, capacity
from .statistics import REFERENCE_STD, BottleneckStatistics, RunningMoments

STATS = ("dataset", "reference_code")
Stats = Literal["dataset", "reference_code"]
Layer = Union[Literal["auto"], StrictInt]


def default_layer(n_layers: int) -> int:
    """The official code's bottleneck after the 9th of BERT-base's 12 layers, scaled to the model's depth:
    round(0.75 × n_layers), halves rounded up (12 → 9, 6 → 5, 2 → 2)."""
    return max(1, int(0.75 * n_layers + 0.5))


class InformationBottleneck(AttributionComponent):
    method_name = "information_bottleneck"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.statistics: Optional[BottleneckStatistics] = None

    @property
    def fits_state(self) -> bool:
        return self.cfg["stats"] == "dataset"

    @property
    def layer(self) -> int:
        """The encoder layer after which the bottleneck sits (1-based: 1 is after the first layer; 0 is the
        embedding output, before any layer)."""
        layer = self.cfg["attribute_at"]
        n_layers = encoder_depth(self.nlp)
        if layer == "auto":
            return default_layer(n_layers)
        if not 0 <= layer <= n_layers:
            raise ValueError(f"layer must be 'auto' or in 0..{n_layers} (0: the embedding output; 1..{n_layers}: "
                             f"after that encoder layer), got {layer}")
        return layer

    def attribution_site(self) -> int:
        return self.layer

    # -- statistics -----------------------------------------------------------------------------------
    def initialize(self, get_examples: Optional[Callable] = None, *, nlp: Optional[Language] = None) -> None:
        """With ``stats = "dataset"``, estimate μ and σ at the bottleneck over the predicted docs of (at most
        `max_examples` of) `get_examples()`. Call it on the trained pipeline (``spacy train`` does, through
        ``spacy_attrib.enable_attribution.v1``, before each save)."""
        super().initialize(get_examples, nlp=nlp)
        if self.cfg["stats"] != "dataset":
            return
        if get_examples is None:
            raise ValueError(f"{self.name}: stats='dataset' estimates its statistics from examples: "
                             "call initialize(get_examples) with the training examples")
        docs = (example.predicted for example in islice(get_examples(), self.cfg["max_examples"]))
        self.statistics = self.fit_statistics(docs)

    def fit_statistics(self, docs: Iterable[Doc]) -> BottleneckStatistics:
        """Per-hidden-unit mean and std at the bottleneck over the real positions of `docs`, streamed."""
        view = self.view
        moments: Optional[RunningMoments] = None
        for group in minibatch((doc for doc in docs if len(doc)), self.cfg["batch_size"]):
            batch = view.encode(group)
            if not batch.input_ids.numel():
                continue
            hidden = view.capture(batch)
            moments = moments or RunningMoments(hidden.shape[-1])
            moments.add(hidden[batch.attention_mask.bool()])
        return (moments or RunningMoments(0)).statistics(self.layer)

    def normalisation(self, batch: EncodedBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """μ and σ, broadcastable to the bottleneck's (rows, T, hidden)."""
        view = self.view
        if self.cfg["stats"] == "reference_code":
            return view.capture_at(batch, self.layer - 1), torch.tensor(REFERENCE_STD, device=view.device)
        if self.statistics is None:
            raise ValueError(
                f"{self.name} (stats='dataset') has no statistics yet: fit them on the trained pipeline with "
                f"nlp.get_pipe({self.name!r}).initialize(get_examples) (spacy train does so when its "
                "[training.before_to_disk] callback is spacy_attrib.enable_attribution.v1), or use "
                "stats='reference_code'")
        if self.statistics.layer != self.layer:
            raise ValueError(f"{self.name}: the statistics were fitted at layer {self.statistics.layer}, the "
                             f"bottleneck is at layer {self.layer}: initialize the component again")
        return self.statistics.tensors(view.device)

    # -- the method -----------------------------------------------------------------------------------
    def explain(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        view, cfg = self.view, self.cfg
        with view.frozen():
            hidden = view.capture(batch)
            with torch.no_grad():
                output = view.forward(batch, hidden, max_rows=cfg["internal_batch_size"])
            targets = self.targets(output, batch)
            mean, std = self.normalisation(batch)
            r = (hidden - mean) / std
            generators = [torch.Generator(device=hidden.device).manual_seed(doc_seed(cfg["seed"], doc))
                          for doc in batch.docs]
            per_slot = [self.optimise(batch, r, mean, std, targets, slot, generators)
                        for slot in range(slot_count(targets))]
        raw = [wordpiece_capacity for wordpiece_capacity, _ in per_slot]
        scores = [self.min_max(batch, values) for values in raw] if cfg["normalise"] else raw

        def extras(d: int, target: Target) -> Dict[str, Any]:
            """The doc's raw capacity (its total, and its range over wordpieces, which undoes `normalise`:
            raw = score × (max − min) + min), where the bottleneck was, and the final loss."""
            slot = targets[d].index(target)
            start, n = batch.row_starts[d], batch.rows[d]
            values = raw[slot][start:start + n][batch.attention_mask[start:start + n].bool()]
            return {"layer": self.layer, "stats": cfg["stats"], "capacity": float(values.sum()),
                    "capacity_min": float(values.min()), "capacity_max": float(values.max()),
                    "loss": per_slot[slot][1][d]}

        return self.maps(batch, targets, output, scores, extras)

    def optimise(self, batch: EncodedBatch, r: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 targets: List[List[Target]], slot: int, generators: List[torch.Generator]
                 ) -> Tuple[torch.Tensor, List[float]]:
        """Fit α for the `slot`-th target of every doc that has one. Returns each row's capacity per
        wordpiece Σ_h C (rows, T; zero on padding) at the α of the last step's forward pass, and each doc's
        final loss."""
        cfg = self.cfg
        docs = [d for d in range(len(batch.docs)) if slot < len(targets[d]) and batch.rows[d]]
        real = batch.attention_mask.unsqueeze(-1).to(r.dtype)
        # Each doc's capacity term is its mean over its own real positions and hidden units.
        weights = torch.zeros(len(r), device=r.device)
        for d in docs:
            start, n = batch.row_starts[d], batch.rows[d]
            weights[start:start + n] = 1.0 / (real[start:start + n].sum() * r.shape[-1])
        alpha = torch.full_like(r, cfg["alpha_init"]).requires_grad_(True)
        optimizer = torch.optim.Adam([alpha], lr=cfg["lr"])
        samples = [d for d in docs for _ in range(cfg["n_samples"])]
        losses = torch.zeros(len(batch.docs), device=r.device)
        for _ in range(cfg["steps"]):
            optimizer.zero_grad()
            losses.zero_()
            for chunk in instance_chunks(batch, samples, cfg["internal_batch_size"]):
                noise = torch.cat([doc_noise(batch, d, r.shape[-1], generators[d]) for d in chunk.doc_index])
                mean_rows = mean[chunk.rows] if mean.dim() == 3 else mean
                values = bottleneck(r[chunk.rows], alpha[chunk.rows], mean_rows, std, noise)
                chunk_output = self.view.forward(batch, values, doc_index=chunk.doc_index,
                                                 max_rows=cfg["internal_batch_size"])
                log_p = slot_values(chunk_output.scores, chunk.doc_index, targets, slot) / cfg["n_samples"]
                (-log_p.sum()).backward()
                losses.index_add_(0, torch.tensor(chunk.doc_index, device=r.device), -log_p.detach())
            units = capacity(r, alpha) * real
            row_capacity = (units * weights.view(-1, 1, 1)).sum((1, 2))
            (cfg["beta"] * row_capacity.sum()).backward()
            wordpiece_capacity = units.detach().sum(-1)
            for d in docs:
                start, n = batch.row_starts[d], batch.rows[d]
                losses[d] += cfg["beta"] * row_capacity[start:start + n].sum().detach()
            optimizer.step()
        return wordpiece_capacity, [float(loss) for loss in losses]

    @staticmethod
    def min_max(batch: EncodedBatch, scores: torch.Tensor) -> torch.Tensor:
        """The official readout: each doc's wordpiece scores scaled to [0, 1] over its real wordpieces."""
        scaled = torch.zeros_like(scores)
        for d, (start, n) in enumerate(zip(batch.row_starts, batch.rows)):
            mask = batch.attention_mask[start:start + n].bool()
            if not n or not mask.any():
                continue
            values = scores[start:start + n]
            low, high = values[mask].min(), values[mask].max()
            scaled[start:start + n] = torch.where(mask, (values - low) / (high - low).clamp_min(1e-12), 0.0)
        return scaled

    # -- serialization: the fitted statistics beside the settings ------------------------------------
    state_name = "statistics"

    def fitted_state(self) -> Optional[Dict[str, Any]]:
        return self.statistics.to_dict() if self.statistics is not None else None

    def restore_state(self, state: Optional[Dict[str, Any]]) -> None:
        self.statistics = BottleneckStatistics.from_dict(state) if state is not None else None


IBA_CONFIG: Dict[str, Any] = {**{k: v for k, v in DEFAULT_CONFIG.items() if k != "attribute_at"},
                              "layer": "auto", "stats": "dataset", "beta": 1e-5, "lr": 1.0, "steps": 10,
                              "n_samples": 10, "alpha_init": 5.0, "normalise": False, "max_examples": 1000,
                              "seed": 0}


@Language.factory("attr_information_bottleneck", default_config=IBA_CONFIG, assigns=ASSIGNS)
def make_information_bottleneck(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
                                aggregation: Aggregation, batch_size: int, internal_batch_size: int,
                                dtype: DType, key: Optional[str], layer: Layer, stats: Stats, beta: float,
                                lr: float, steps: int, n_samples: int, alpha_init: float, normalise: bool,
                                max_examples: int, seed: int) -> InformationBottleneck:
    """IBA after encoder layer `layer` (``"auto"``: round(0.75 × n_layers), the official 9 of 12; 0: on the
    embedding output, where each position holds only its own token), with
    μ, σ from the training data (``stats = "dataset"``, fitted in `initialize`) or the official code's
    per-example quirk (``"reference_code"``). Scores are capacities in nats (``normalise``: min–max per
    doc, the official readout)."""
    check_choice("stats", stats, STATS)
    if output != "log_prob":
        raise ValueError(f"output must be 'log_prob' for the information bottleneck (its loss is the "
                         f"cross-entropy of the target), got {output!r}")
    if not isinstance(layer, int) and layer != "auto":
        raise ValueError(f"layer must be 'auto' or an encoder layer number, got {layer!r}")
    if isinstance(layer, int) and layer < 0:
        raise ValueError(f"layer must be 'auto', 0 (the embedding output) or an encoder layer number, got {layer}")
    if layer == 0 and stats == "reference_code":
        raise ValueError("stats='reference_code' takes μ from the input of the layer the bottleneck follows; "
                         "layer 0 (the embedding output) follows none: use stats='dataset' there")
    for setting, value in (("steps", steps), ("n_samples", n_samples), ("max_examples", max_examples)):
        if value < 1:
            raise ValueError(f"{setting} must be at least 1, got {value}")
    if beta < 0 or lr <= 0:
        raise ValueError(f"beta must be >= 0 and lr > 0, got beta={beta}, lr={lr}")
    return InformationBottleneck(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                                 attribute_at=layer, batch_size=batch_size,
                                 internal_batch_size=internal_batch_size, dtype=dtype, key=key, stats=stats,
                                 beta=beta, lr=lr, steps=steps, n_samples=n_samples, alpha_init=alpha_init,
                                 normalise=normalise, max_examples=max_examples, seed=seed)
