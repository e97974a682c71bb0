"""`attr_diffmask`: DiffMask (De Cao, Schlichtkrull, Aziz & Titov, EMNLP 2020, "How do Decisions Emerge across
Layers in Neural Models? Interpretation with Differentiable Masking"), after its official code
(`nicola-decao/diffmask`: `sentiment_classification_sst_diffmask.py`, `gates.py`, `run_sst_diffmask.py`).

A probe learns which wordpieces can be replaced by a learned placeholder ``b`` without changing the prediction:
``ĥ = z·h + (1 − z)·b`` with Hard Concrete gates z (`gates`). It is trained over a data set (amortised) on the
frozen model, on the constrained problem "keep as few positions as possible, subject to KL(p ‖ p̂) ≤ ε",
relaxed to the Lagrangian, per doc,

    λ_ℓ · (KL(p(x) ‖ p(x̂)) − ε) + mean_i log P(z_i ≠ 0)

(the official code penalises the mean *log*-probability of keeping, over the doc's real positions, [CLS] and
[SEP] included), minimised by the probe and maximised by the multiplier λ_ℓ ∈ [0, 200]. Each batch trains one
depth ℓ drawn at random among the L + 2 states (`DifferentiableView.states`: word embeddings, each encoder
layer's input, the last output); with `stop_train`, depths whose running agreement exceeds 0.75 and running
L0 is below 0.1 after 100 steps are drawn with weight 0.1.

- ``gate = "input"`` (the default): gate ℓ reads ``[h⁰; hˡ]`` (word embeddings and state ℓ); the mask applied
  to the word embeddings (before position and type embeddings are added) is the product of gates 0..ℓ, and
  its log keep probability the sum. The readout's column ℓ is "kept according to the states up to ℓ".
- ``gate = "hidden"``: gate ℓ reads hˡ alone and masks state ℓ only, with a placeholder per state.

KL is that of the head's output distribution (the exclusive textcat's softmax; for textcat_multilabel the
sum over labels of the Bernoulli KLs); agreement is the same arg-max (the same label set at the head's
threshold). The mask explains the prediction as a whole, not one label: every target gets the same scores.

Attribution: the closed-form keep probabilities P(z ≠ 0), a wordpieces × (L + 2) matrix in
``extras["keep"]`` (rows as ``Attribution.wordpieces``, columns named by ``extras["states"]``), and the
score of a token at ``depth`` (a state index) or, by default, ``"layers_kept"``: the sum of its keep
probabilities over the states (the official SST notebook's "after how many layers a token is dropped").
Wordpieces are combined into tokens by their mean (a probability; the `aggregation` setting).

Choices against the official code, and why:

- λ takes RMSprop steps of gradient *ascent* (learning rate `lagrangian_lr` = 0.3, α = 0.99, as the official
  Lookahead-RMSprop without its lookahead averaging), clipped to [0, 200] after each step: RMSprop's steps
  have the size of the learning rate whatever the size of KL − ε, so λ moves about a thousand times faster
  than the gates (official gate learning rate 3e-4). That ratio is what keeps the gates open: on a confident
  (saturated) head, the KL is nearly a step function of a needed token's gate, flat until the gate is almost
  closed, so the L0 term alone closes every gate; a λ that reacts within a few steps to KL > ε reopens the
  needed ones before the probe forgets them. A plain gradient step (λ += lr·(KL − ε)) is 10–100× slower
  at KL ≈ ε (an earlier version with it saw every gate of MiniLM close within 10 steps at a gate learning
  rate of 1e-3).
- Measured on the tests' planted-key textcat (a 2-layer BERT, saturated: the key alone decides; 300 steps at
  3e-3): at depths 0 and 1 (the word-embedding gate, the embedding output) the key of every doc that needs
  it keeps ≥ 0.99 and every other token falls below 0.1; the other label's key is rightly dropped (the
  learned placeholder alone gives that label). The deeper input gates (products of 3 and 4 gates) still
  close the key and violate the constraint within those 300 steps (λ ≈ 50 by then): once a gate's samples
  are all 0 no KL gradient reaches it, while the mean-log-probability penalty keeps pushing it shut. The
  official code meets this with a learning rate 10× lower, a 1,200-step warm-up and up to 300 epochs.
- The gates' (and placeholder's) learning rate is spaCy's optimizer's, one rate for both (the official
  placeholder rate is 1e-3, the gates' 3e-4); the config warms it up as the official constant schedule does.
- Model selection (`score`) is the official one in spaCy's higher-is-better form: ``diffmask_score`` =
  1 − L0 (the share of positions dropped) when the mean KL ≤ `eps_valid` (0.8) and the agreement ≥
  `acc_valid` (0.75), else 0 (no better than keeping everything; the official loss is +∞). The official
  code draws one depth per validation batch; `score` takes the expectation over that draw, every depth
  for every doc, with gate samples drawn from the `seed`, so the score is deterministic.
"""

from typing import Any, Dict, Iterable, List, Literal, Optional, Tuple, Union

import torch
from pydantic import StrictInt
from spacy.language import Language
from spacy.training import Example
from spacy.util import minibatch

from ...targets import Target
from ...view import EncodedBatch, encoder_depth, state_site
from ...view.heads import ClassifierHead
from ..base import ASSIGNS, DEFAULT_CONFIG, DType, Labels, Output, WordpieceMap, check_choice
from ..trainable import TrainableAttributionComponent
from .gates import HardConcrete, MLPMaxGate

GATES = ("input", "hidden")
Gate = Literal["input", "hidden"]
Depth = Union[Literal["layers_kept"], StrictInt]
Aggregation = Literal["sum", "mean", "max_abs"]
LAGRANGE_MAX = 200.0
RMSPROP_ALPHA = 0.99
# `stop_train` (official): a depth is drawn less often once it is learnt.
STOP_AGREEMENT, STOP_L0, STOP_STEPS, STOP_WEIGHT = 0.75, 0.1, 100, 0.1


class DiffMaskProbe(torch.nn.Module):
    """The gates of every state and the placeholders, with the Lagrange multipliers and running statistics
    as buffers (saved with the weights, updated outside autograd)."""

    def __init__(self, gate: str, hidden_size: int, n_states: int, gate_hidden: int,
                 placeholder: Optional[torch.Tensor]):
        super().__init__()
        check_choice("gate", gate, GATES)
        self.gate = gate
        n_in = 2 * hidden_size if gate == "input" else hidden_size
        self.gates = torch.nn.ModuleList([MLPMaxGate(n_in, gate_hidden) for _ in range(n_states)])
        n_placeholders = 1 if gate == "input" else n_states
        if placeholder is None:
            self.register_buffer("placeholder", torch.zeros((n_placeholders, hidden_size)))
        else:
            self.placeholder = torch.nn.Parameter(placeholder.reshape(n_placeholders, hidden_size).clone())
        self.register_buffer("lagrange", torch.ones(n_states))
        self.register_buffer("lagrange_square_mean", torch.zeros(n_states))
        self.register_buffer("running_agreement", torch.ones(n_states))
        self.register_buffer("running_l0", torch.ones(n_states))
        self.register_buffer("running_steps", torch.zeros(n_states))

    @property
    def n_states(self) -> int:
        return len(self.gates)

    def logits(self, states: List[torch.Tensor], depth: Optional[int] = None) -> torch.Tensor:
        """Gate logits (rows, T, gates): of states 0..depth for input gates (all without `depth`), of state
        `depth` alone for hidden gates (all without `depth`)."""
        if self.gate == "input":
            last = self.n_states - 1 if depth is None else depth
            return torch.stack([self.gates[i](torch.cat([states[0], states[i]], -1)) for i in range(last + 1)], -1)
        chosen = range(self.n_states) if depth is None else [depth]
        return torch.stack([self.gates[i](states[i]) for i in chosen], -1)

    def masked(self, states: List[torch.Tensor], depth: int, generator: Optional[torch.Generator]
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For training at `depth`: the masked value of state `masked_state(depth)` from sampled gates, and
        each position's log keep probability and keep probability in closed form (rows, T)."""
        gates = HardConcrete(self.logits(states, depth))
        z = gates.rsample(generator).prod(-1)
        log_keep = gates.log_expected_l0().sum(-1)
        index = 0 if self.gate == "input" else depth
        placeholder = self.placeholder[0 if self.gate == "input" else depth]
        value = states[index] * z.unsqueeze(-1) + placeholder * (1 - z).unsqueeze(-1)
        return value, log_keep, log_keep.exp()

    def masked_state(self, depth: int) -> int:
        """The state a pass at `depth` masks: the word embeddings for input gates, state `depth` for hidden."""
        return 0 if self.gate == "input" else depth

    def keep(self, states: List[torch.Tensor]) -> torch.Tensor:
        """The readout (rows, T, states): P(kept) at every depth (input gates: the product up to it)."""
        log_keep = HardConcrete(self.logits(states)).log_expected_l0()
        return (log_keep.cumsum(-1) if self.gate == "input" else log_keep).exp()


class DiffMask(TrainableAttributionComponent):
    method_name = "diffmask"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._generator: Optional[torch.Generator] = None
        self._pending: Optional[torch.Tensor] = None  # Σ (KL − ε) per depth since the last step
        self._drawn: Optional[torch.Tensor] = None

    @property
    def view(self):
        view = super().view
        if not isinstance(view.head, ClassifierHead):
            raise ValueError(
                f"attr_diffmask explains doc-level classifiers ({', '.join(ClassifierHead.factories)}): its "
                f"constraint is the KL between the head's output distributions; {view.head_name!r} is a "
                f"{type(view.head).__name__}")
        return view

    # -- the probe --------------------------------------------------------------------------------------
    def make_probe(self) -> Tuple[DiffMaskProbe, Dict[str, Any]]:
        view, cfg = self.view, self.cfg
        embeddings = view.hf_model.get_input_embeddings().weight
        hidden_size = int(embeddings.shape[1])
        n_states = encoder_depth(self.nlp) + 2
        gate_hidden = hidden_size // 4 if cfg["gate_hidden"] == "auto" else int(cfg["gate_hidden"])
        shape = {"gate": cfg["gate"], "hidden_size": hidden_size, "n_states": n_states, "gate_hidden": gate_hidden,
                 "placeholder": cfg["placeholder"]}
        with torch.random.fork_rng(devices=[]):  # the probe's initial weights from `seed`, the global RNG untouched
            torch.manual_seed(cfg["seed"])
            placeholder = None
            if cfg["placeholder"]:
                # The official initialisation: the [MASK] word embedding for the word-embedding state; a
                # Xavier-normal vector (1, 1, hidden) for each state of hidden gates above it.
                mask = embeddings[view.token_id("mask")].detach().float()
                if cfg["gate"] == "input":
                    placeholder = mask
                else:
                    placeholder = torch.cat([mask[None]] + [torch.nn.init.xavier_normal_(torch.empty(1, 1, hidden_size))[0]
                                                            for _ in range(n_states - 1)])
            return DiffMaskProbe(cfg["gate"], hidden_size, n_states, gate_hidden, placeholder), shape

    def probe_from_shape(self, shape: Dict[str, Any]) -> DiffMaskProbe:
        placeholder = torch.zeros(1 if shape["gate"] == "input" else shape["n_states"], shape["hidden_size"])
        return DiffMaskProbe(shape["gate"], shape["hidden_size"], shape["n_states"], shape["gate_hidden"],
                             placeholder if shape["placeholder"] else None)

    @property
    def trained_probe(self) -> DiffMaskProbe:
        probe = self.probe
        if probe.gate != self.cfg["gate"]:
            raise ValueError(f"{self.name}: the probe was trained with gate={probe.gate!r}, the setting is "
                             f"{self.cfg['gate']!r}: train it again")
        return probe

    def generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=self.view.device).manual_seed(self.cfg["seed"])
        return self._generator

    # -- the objective ------------------------------------------------------------------------------------
    def divergence(self, clean: torch.Tensor, masked: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per instance (logits (instances, 1, labels)): KL(p(clean) ‖ p(masked)), and whether the
        prediction is the same (1.0) or not (0.0)."""
        clean, masked = clean[:, 0], masked[:, 0]
        if self.view.exclusive:
            p = torch.log_softmax(clean, -1)
            kl = (p.exp() * (p - torch.log_softmax(masked, -1))).sum(-1)
            return kl, (clean.argmax(-1) == masked.argmax(-1)).float()
        log_p, log_not_p = torch.nn.functional.logsigmoid(clean), torch.nn.functional.logsigmoid(-clean)
        log_q, log_not_q = torch.nn.functional.logsigmoid(masked), torch.nn.functional.logsigmoid(-masked)
        kl = (log_p.exp() * (log_p - log_q) + log_not_p.exp() * (log_not_p - log_not_q)).sum(-1)
        threshold = float(self.view.head.pipe.cfg.get("threshold", 0.5))
        same = ((torch.sigmoid(clean) >= threshold) == (torch.sigmoid(masked) >= threshold)).all(-1)
        return kl, same.float()

    def per_doc_mean(self, batch: EncodedBatch, values: torch.Tensor) -> torch.Tensor:
        """Each doc's mean of `values` (rows, T) over its real positions (all its rows)."""
        mask = batch.attention_mask.to(values.dtype)
        means = []
        for start, n in zip(batch.row_starts, batch.rows):
            weight = mask[start:start + n]
            means.append((values[start:start + n] * weight).sum() / weight.sum())
        return torch.stack(means)

    def masked_pass(self, batch: EncodedBatch, states: List[torch.Tensor], clean: torch.Tensor, depth: int,
                    generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """One pass with the batch masked at `depth`: per doc, KL, agreement, mean log keep probability and
        L0 (mean keep probability)."""
        probe = self.trained_probe
        value, log_keep, keep = probe.masked(states, depth, generator)
        output = self.view.forward(batch, value, site=state_site(probe.masked_state(depth)),
                                   max_rows=self.cfg["internal_batch_size"])
        kl, agreement = self.divergence(clean, output.logits)
        return {"kl": kl, "agreement": agreement, "log_keep": self.per_doc_mean(batch, log_keep),
                "l0": self.per_doc_mean(batch, keep.detach())}

    def draw_depth(self) -> int:
        probe = self.trained_probe
        weights = torch.ones(probe.n_states)
        if self.cfg["stop_train"]:
            learnt = ((probe.running_agreement > STOP_AGREEMENT) & (probe.running_l0 < STOP_L0)
                      & (probe.running_steps > STOP_STEPS)).cpu()
            weights[learnt] = STOP_WEIGHT
        return int(torch.multinomial(weights.to(self.view.device), 1, generator=self.generator()))

    def encoded(self, examples: Iterable[Example]) -> Optional[EncodedBatch]:
        """The examples' docs that the transformer sees wordpieces of, encoded (None if there is none)."""
        docs = [eg.predicted for eg in examples if len(eg.predicted)]
        batch = self.view.encode(docs) if docs else None
        if batch is not None and not all(batch.rows):
            docs = [doc for doc, n in zip(docs, batch.rows) if n]
            batch = self.view.encode(docs) if docs else None
        return batch

    def loss(self, examples: Iterable[Example]) -> Optional[torch.Tensor]:
        """The Lagrangian on a batch at one drawn depth, mean over docs; (KL − ε) is kept for λ's step."""
        batch = self.encoded(examples)
        if batch is None:
            return None
        probe, cfg = self.trained_probe, self.cfg
        states = self.view.states(batch)
        with torch.no_grad():
            clean = self.view.forward(batch, max_rows=cfg["internal_batch_size"]).logits
        depth = self.draw_depth()
        values = self.masked_pass(batch, states, clean, depth, self.generator())
        constraint = values["kl"] - cfg["eps"]
        with torch.no_grad():
            if self._pending is None:
                self._pending = torch.zeros_like(probe.lagrange)
                self._drawn = torch.zeros_like(probe.lagrange, dtype=torch.bool)
            self._pending[depth] += constraint.mean()
            self._drawn[depth] = True
            probe.running_agreement[depth] = probe.running_agreement[depth] * 0.9 + values["agreement"].mean() * 0.1
            probe.running_l0[depth] = probe.running_l0[depth] * 0.9 + values["l0"].mean() * 0.1
            probe.running_steps[depth] += 1
        return (probe.lagrange[depth] * constraint + values["log_keep"]).mean()

    def after_step(self) -> None:
        """λ's step of gradient ascent on the constraint (RMSprop, see the module docstring), clipped."""
        if self._pending is None:
            return
        probe = self.trained_probe
        with torch.no_grad():
            drawn = self._drawn
            gradient = self._pending[drawn]
            square_mean = probe.lagrange_square_mean[drawn] * RMSPROP_ALPHA + (1 - RMSPROP_ALPHA) * gradient ** 2
            probe.lagrange_square_mean[drawn] = square_mean
            step = self.cfg["lagrangian_lr"] * gradient / (square_mean.sqrt() + 1e-8)
            probe.lagrange[drawn] = (probe.lagrange[drawn] + step).clamp(0.0, LAGRANGE_MAX)
        self._pending, self._drawn = None, None

    # -- model selection ----------------------------------------------------------------------------------
    def score(self, examples: Iterable[Example], **kwargs: Any) -> Dict[str, float]:
        """The official validation (module docstring): ``diffmask_score`` (higher is better), and the mean
        ``diffmask_l0``, ``diffmask_kl`` and ``diffmask_agreement`` over docs and depths."""
        probe, cfg = self.trained_probe, self.cfg
        generator = torch.Generator(device=self.view.device).manual_seed(cfg["seed"])
        totals = {"l0": 0.0, "kl": 0.0, "agreement": 0.0}
        n = 0
        with self.view.frozen(), torch.no_grad():
            for group in minibatch(examples, cfg["batch_size"]):
                batch = self.encoded(group)
                if batch is None:
                    continue
                states = self.view.states(batch)
                clean = self.view.forward(batch, max_rows=cfg["internal_batch_size"]).logits
                for depth in range(probe.n_states):
                    values = self.masked_pass(batch, states, clean, depth, generator)
                    for name in totals:
                        totals[name] += float(values[name].sum())
                    n += len(batch.docs)
        if not n:
            return {}
        means = {f"diffmask_{name}": value / n for name, value in totals.items()}
        valid = means["diffmask_kl"] <= cfg["eps_valid"] and means["diffmask_agreement"] >= cfg["acc_valid"]
        return {"diffmask_score": 1.0 - means["diffmask_l0"] if valid else 0.0, **means}

    # -- the readout ----------------------------------------------------------------------------------------
    def explain(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        view, cfg = self.view, self.cfg
        probe = self.trained_probe
        depth = cfg["depth"]
        if depth != "layers_kept" and not 0 <= depth < probe.n_states:
            raise ValueError(f"depth must be 'layers_kept' or a state in 0..{probe.n_states - 1}, got {depth}")
        with view.frozen(), torch.no_grad():
            keep = probe.keep(view.states(batch)) * batch.attention_mask.unsqueeze(-1)
            output = view.forward(batch, max_rows=cfg["internal_batch_size"])
        targets = self.targets(output, batch)
        scores = keep.sum(-1) if depth == "layers_kept" else keep[..., depth]
        names = ["word_embeddings", "embeddings"] + [f"layer_{i}" for i in range(1, probe.n_states - 1)]

        def extras(d: int, target: Target) -> Dict[str, Any]:
            start, n = batch.row_starts[d], batch.rows[d]
            matrix = keep[start:start + n].reshape(-1, probe.n_states)[batch.layout(d).positions]
            return {"keep": matrix.tolist(), "states": names, "gate": probe.gate, "depth": depth}

        return self.maps(batch, targets, output, [scores] * max(map(len, targets), default=0), extras)


DIFFMASK_CONFIG: Dict[str, Any] = {**{k: v for k, v in DEFAULT_CONFIG.items() if k != "attribute_at"},
                                   "aggregation": "mean", "gate": "input", "depth": "layers_kept", "eps": 0.1,
                                   "eps_valid": 0.8, "acc_valid": 0.75, "lagrangian_lr": 0.3,
                                   "gate_hidden": "auto", "placeholder": True, "stop_train": False, "seed": 0}


@Language.factory("attr_diffmask", default_config=DIFFMASK_CONFIG, assigns=ASSIGNS,
                  default_score_weights={"diffmask_score": 1.0, "diffmask_l0": 0.0, "diffmask_kl": 0.0,
                                         "diffmask_agreement": 0.0})
def make_diffmask(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
                  aggregation: Aggregation, batch_size: int, internal_batch_size: int, dtype: DType,
                  key: Optional[str], gate: Gate, depth: Depth, eps: float, eps_valid: float, acc_valid: float,
                  lagrangian_lr: float, gate_hidden: Union[Literal["auto"], StrictInt], placeholder: bool,
                  stop_train: bool, seed: int) -> DiffMask:
    """DiffMask's probe on the frozen transformer and head (train it with spacy train: configs/masks/). Scores
    are keep probabilities: at state `depth`, or summed over the states (``"layers_kept"``)."""
    check_choice("gate", gate, GATES)
    if depth != "layers_kept" and (not isinstance(depth, int) or depth < 0):
        raise ValueError(f"depth must be 'layers_kept' or a state index from 0, got {depth!r}")
    if eps < 0 or eps_valid < 0 or not 0 <= acc_valid <= 1 or lagrangian_lr <= 0:
        raise ValueError(f"eps and eps_valid must be >= 0, acc_valid in [0, 1] and lagrangian_lr > 0, got "
                         f"eps={eps}, eps_valid={eps_valid}, acc_valid={acc_valid}, lagrangian_lr={lagrangian_lr}")
    if gate_hidden != "auto" and gate_hidden < 1:
        raise ValueError(f"gate_hidden must be 'auto' or at least 1, got {gate_hidden}")
    return DiffMask(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                    attribute_at="word_embeddings", batch_size=batch_size, internal_batch_size=internal_batch_size,
                    dtype=dtype, key=key, gate=gate, depth=depth, eps=eps, eps_valid=eps_valid, acc_valid=acc_valid,
                    lagrangian_lr=lagrangian_lr, gate_hidden=gate_hidden, placeholder=placeholder,
                    stop_train=stop_train, seed=seed)
