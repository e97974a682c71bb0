"""Variational word masks (VMASK): Chen & Ji 2020, "Learning Variational Word Masks to Improve the
Interpretability of Neural Text Classifiers" (EMNLP), for BERT encoders under spacy-transformers.

VMASK is a way of training, not a post-hoc explainer: a mask layer between the embedding layer and the first
encoder layer is trained jointly with the classifier, so **the model it explains is a different model** from
the same pipeline trained plainly. For each wordpiece's embedding output x_t (word + position + type
embeddings after LayerNorm, what the official code masks, `UVa-NLP/VMASK` ``bert_VMASK/bert_mask_model.py``):

- the mask logits are ``W₂ tanh(W₁ x_t + b₁) + b₂`` (``mask_hidden`` = 100 units), two per wordpiece (drop,
  keep), and the keep probability is q_t = softmax(logits_t)[keep];
- training: x'_t = R_t x_t with R_t = gumbel_softmax(logits_t, τ = 1, hard = True)[keep], a straight-through
  Bernoulli sample (0 or 1 forward; the relaxed sample's gradient backward);
- inference (eval mode): x'_t = q_t x_t, the expectation, deterministic;
- the loss gets the information term β · I with I = mean_t [q_t log q_t + (1 − q_t) log(1 − q_t)], the
  masks' negative entropy (KL(Bernoulli(q_t) ‖ Bernoulli(½)) − log 2): it pulls masks towards ½ unless the
  task needs them;
- β anneals from ``beta0`` = 1 by ``beta_step`` = 0.099 down to ``beta_min`` = 0.01 (the official code: once
  per epoch while β > 0.01; here every ``anneal_every`` training passes, counted in the ``vmask_steps``
  buffer, which is saved with the weights);
- the embedding layer is frozen (the official code sets ``requires_grad = False`` on ``bert.embeddings``).

How it sits in spaCy. `VMaskBertModel` is a Hugging Face `BertModel` (``model_type`` ``"vmask_bert"``,
registered with the Auto classes, so spacy-transformers saves and loads it like any transformer) whose mask is
a forward pre-hook on encoder layer 0: it sees the full embedding output, and a pass that starts above a
layer (the view's layer sites) skips it with the layers below. spaCy's loss is the head's: the transformer
only receives its gradient, in the backward pass from its last hidden state, so the information term rides
along that pass: `_WithInformationGradient` is the identity on the masked embeddings, and its backward adds
β ∂I/∂logits to the mask logits' gradient. spaCy's heads sum their loss over docs (textcat's gradient is
p − y per doc, not divided by the batch size), so the term is I per row (a doc, or a window of a long one),
summed over rows, padding left out: per doc, the paper's balance of cross-entropy and β · I.

The architecture ``spacy_attrib.VMaskTransformer.v1`` is ``spacy-transformers.TransformerModel.v3`` around a
VMASK model built from a BERT base (its weights, a new mask): see `create_vmask_transformer`.
"""

import math
from functools import partial
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from spacy_transformers.layers.transformer_model import TransformerModel, huggingface_from_pretrained
from transformers import AutoConfig, AutoModel, BertConfig, BertModel

KEEP = 1  # the index of "keep" among a wordpiece's two mask logits (the official code's r[..., 1])


def check_vmask_settings(mask_hidden: int, init_keep: float, beta0: float, beta_step: float, beta_min: float,
                         anneal_every: int) -> None:
    """A clear error for settings VMASK cannot train with."""
    if mask_hidden < 1:
        raise ValueError(f"mask_hidden must be at least 1, got {mask_hidden}")
    if not 0.0 < init_keep < 1.0:
        raise ValueError(f"init_keep must be a probability strictly between 0 and 1, got {init_keep}")
    if min(beta0, beta_step, beta_min) < 0:
        raise ValueError(f"beta0, beta_step and beta_min must be ≥ 0, got {beta0}, {beta_step}, {beta_min}")
    if beta_min > beta0:
        raise ValueError(f"beta_min ({beta_min}) must not exceed beta0 ({beta0})")
    if anneal_every < 1:
        raise ValueError(f"anneal_every must be at least 1 training pass, got {anneal_every}")


class VMaskBertConfig(BertConfig):
    """A `BertConfig` with VMASK's settings (defaults: the official code's, see the module docstring).

    init_keep: the keep probability the mask starts at (the final bias is set to give it; the official
        code's default initialization gives about ½).
    anneal_every: training passes between two steps of β.
    """

    model_type = "vmask_bert"

    def __init__(self, mask_hidden: int = 100, init_keep: float = 0.5, beta0: float = 1.0, beta_step: float = 0.099,
                 beta_min: float = 0.01, anneal_every: int = 1000, **kwargs):
        check_vmask_settings(mask_hidden, init_keep, beta0, beta_step, beta_min, anneal_every)
        # A base BERT's config (from_pretrained of a "bert" directory) carries its own model_type; this one's is
        # the class's, as in the configs it saves.
        kwargs.pop("model_type", None)
        super().__init__(**kwargs)
        self.mask_hidden = mask_hidden
        self.init_keep = init_keep
        self.beta0 = beta0
        self.beta_step = beta_step
        self.beta_min = beta_min
        self.anneal_every = anneal_every


def keep_probability(logits: torch.Tensor) -> torch.Tensor:
    """q_t = softmax(logits_t)[keep], the expectation of the mask (..., 2) → (...)."""
    return F.softmax(logits.float(), dim=-1)[..., KEEP]


def information_term(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_t weights_t · [q_t log q_t + (1 − q_t) log(1 − q_t)], the weighted negative entropy of the masks.

    Computed as Σ_k softmax_k · log_softmax_k (exact where q_t is 0 or 1; the official code adds 1e-8 inside
    the logarithms)."""
    log_q = F.log_softmax(logits.float(), dim=-1)
    return (weights * (log_q.exp() * log_q).sum(-1)).sum()


class _WithInformationGradient(torch.autograd.Function):
    """The identity on the masked embeddings; backward also gives the mask logits ∂(information_term)/∂logits,
    so that the term's gradient reaches the mask with the head's, in the one backward pass spaCy runs."""

    @staticmethod
    def forward(ctx, masked: torch.Tensor, logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits, weights)
        return masked.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, None]:
        logits, weights = ctx.saved_tensors
        with torch.enable_grad():
            leaf = logits.detach().requires_grad_(True)
            (d_logits,) = torch.autograd.grad(information_term(leaf, weights), leaf)
        return grad, d_logits.to(logits.dtype), None


class WordMask(torch.nn.Module):
    """The mask network: two logits (drop, keep) per wordpiece from its embedding output."""

    def __init__(self, hidden_size: int, mask_hidden: int):
        super().__init__()
        self.hidden = torch.nn.Linear(hidden_size, mask_hidden)
        self.logits = torch.nn.Linear(mask_hidden, 2)

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        return self.logits(torch.tanh(self.hidden(embedded)))


class VMaskBertModel(BertModel):
    """A `BertModel` whose embedding output is masked by a `WordMask` (the `vmask` module) before encoder layer
    0; its embedding layer is frozen. See the module docstring."""

    config_class = VMaskBertConfig

    def __init__(self, config: VMaskBertConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer)
        self.vmask = WordMask(config.hidden_size, config.mask_hidden)
        # Training passes so far, for β's schedule: a buffer, so it is saved (and restored) with the weights.
        self.register_buffer("vmask_steps", torch.zeros((), dtype=torch.long))
        self._real_positions: Optional[torch.Tensor] = None
        for param in self.embeddings.parameters():
            param.requires_grad_(False)
        self.encoder.layer[0].register_forward_pre_hook(self._mask_embedding_output)
        # BertModel.__init__ initialized its own modules; this initializes the mask (`_init_weights`).
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, WordMask):
            # Its Linear layers were initialized before it (children first): only the final bias is set, so
            # that the keep probability starts at init_keep (the weights are small: std initializer_range).
            keep = self.config.init_keep
            module.logits.bias.data.copy_(torch.tensor([0.0, math.log(keep / (1 - keep))]))

    @property
    def beta(self) -> float:
        """β at the current training pass: beta0 lowered by beta_step every anneal_every passes, ≥ beta_min."""
        config = self.config
        steps_taken = int(self.vmask_steps) // config.anneal_every
        return max(config.beta_min, config.beta0 - config.beta_step * steps_taken)

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                *args, **kwargs):
        # The information term leaves padding out: the hook on layer 0 reads which positions are real.
        self._real_positions = attention_mask
        try:
            return super().forward(input_ids, attention_mask, *args, **kwargs)
        finally:
            self._real_positions = None

    def _mask_embedding_output(self, layer: torch.nn.Module, args: Tuple) -> Tuple:
        embedded, *rest = args
        logits = self.vmask(embedded)
        if self.training:
            keep = F.gumbel_softmax(logits.float(), tau=1.0, hard=True)[..., KEEP]
        else:
            keep = keep_probability(logits)
        masked = keep.unsqueeze(-1).to(embedded.dtype) * embedded
        if self.training and torch.is_grad_enabled():
            masked = _WithInformationGradient.apply(masked, logits, self.information_weights(embedded))
            self.vmask_steps += 1
        return (masked, *rest)

    def information_weights(self, embedded: torch.Tensor) -> torch.Tensor:
        """β / (the row's number of real wordpieces) at each real position, 0 at padding: the weights that make
        `information_term` β · Σ_rows mean_t I_t."""
        rows, width = embedded.shape[:2]
        real = (torch.ones((rows, width), device=embedded.device) if self._real_positions is None
                else self._real_positions[:, :width].to(embedded.device).float())
        return self.beta * real / real.sum(1, keepdim=True).clamp(min=1.0)


AutoConfig.register(VMaskBertConfig.model_type, VMaskBertConfig)
AutoModel.register(VMaskBertConfig, VMaskBertModel)


def create_vmask_transformer(name: str, get_spans: Callable, anneal_every: int, init_keep: float = 0.5,
                             mask_hidden: int = 100, beta0: float = 1.0, beta_step: float = 0.099,
                             beta_min: float = 0.01, tokenizer_config: dict = {}, transformer_config: dict = {},
                             mixed_precision: bool = False, grad_scaler_config: dict = {}) -> TransformerModel:
    """``spacy_attrib.VMaskTransformer.v1``: spacy-transformers' `TransformerModel` (the settings of
    ``spacy-transformers.TransformerModel.v3``) whose Hugging Face model is a `VMaskBertModel` made from the BERT
    at `name` (a Hugging Face name or directory: its weights, and a new mask with VMASK's settings) when the
    pipeline is initialized. A saved pipeline holds the VMASK model itself and loads without `name`.

    anneal_every has no default: it is the number of training passes (spaCy updates) per step of β, which
    the official code takes once per epoch, so it depends on the data set and batch size.
    """
    check_vmask_settings(mask_hidden, init_keep, beta0, beta_step, beta_min, anneal_every)
    settings = dict(mask_hidden=mask_hidden, init_keep=init_keep, beta0=beta0, beta_step=beta_step,
                    beta_min=beta_min, anneal_every=anneal_every)
    model = TransformerModel(name, get_spans, tokenizer_config, transformer_config, mixed_precision,
                             grad_scaler_config)
    model.init = partial(init_vmask_transformer, settings=settings)
    return model


def init_vmask_transformer(model: TransformerModel, X=None, Y=None, *, settings: Dict) -> None:
    """Load the base BERT at the model's `name` as a `VMaskBertModel` with `settings` (what spacy-transformers'
    own init does with the Auto classes), unless a transformer is already there (a loaded pipeline)."""
    if model.attrs["has_transformer"]:
        return
    name = model.attrs["name"]
    base_type = AutoConfig.from_pretrained(str(name)).model_type
    if base_type not in ("bert", VMaskBertConfig.model_type):
        raise ValueError(f"spacy_attrib.VMaskTransformer.v1 masks BERT encoders (model_type 'bert'); {name!r} is "
                         f"a {base_type!r} model")
    hf = huggingface_from_pretrained(name, model._init_tokenizer_config,
                                     {**model._init_transformer_config, **settings},
                                     config_cls=VMaskBertConfig, model_cls=VMaskBertModel)
    model.attrs["set_transformer"](model, hf)
