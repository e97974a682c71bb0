"""The attention probabilities of the Hugging Face module, captured from the forward passes the view runs.

`capturing(hf_model, reduce)` is a scoped context: for its length, every call of the module returns its
attention probabilities (``output_attentions``), in the eager implementation, and a forward hook records
them; on exit the implementation, the hooks and the call are as before. Nothing is captured, and nothing
runs differently, outside the context.

Models loaded with ``sdpa`` attention (the default of transformers 4.53 for BERT) compute no attention
matrix. Inside the context the config's implementation is ``eager`` (models that dispatch on it per call
use it), and ``output_attentions=True`` makes the SDPA modules of models that fix their attention class at
load time (BERT, RoBERTa) fall back to their eager parent's forward; the matrices are exactly those of an
eager model with the same weights.

Each call's attention is masked by its own attention mask: padded key columns and padded query rows are 0,
so every real query row is a probability distribution over the real positions of its row. The view runs
rows in chunks of at most ``max_rows``: each chunk is one call, recorded in order, and `values`
concatenates them. `reduce` turns one call's attention (a tuple over layers of (rows, heads, T, T)) into
what a method keeps, so memory is bounded by one chunk's attention whatever the number of docs.
"""

from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch

from .guards import quiet_eager_fallback

#: one call's attention, a tuple over layers of (rows, heads, T, T), to what a method keeps: a tensor whose
#: first axis is the rows and whose last two axes are positions (query, key)
Reduce = Callable[[Sequence[torch.Tensor]], torch.Tensor]


def stack_layers(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Every layer's attention, (rows, layers, heads, T, T): what is kept when no reduction is given."""
    return torch.stack(tuple(attentions), dim=1)


class CapturedAttention:
    """What the forward passes inside `capturing` attended, one entry per call of the module, reduced."""

    def __init__(self, reduce: Reduce):
        self.reduce = reduce
        self.calls: List[torch.Tensor] = []

    def record(self, attentions: Sequence[torch.Tensor], attention_mask: Optional[torch.Tensor]) -> None:
        first = attentions[0]
        if attention_mask is None:
            attention_mask = torch.ones(first.shape[0], first.shape[-1], device=first.device)
        mask = attention_mask.float()
        real_pairs = mask[:, None, :, None] * mask[:, None, None, :]
        # The hook runs inside the view's autocast (``dtype = bfloat16``): reductions run in float32.
        with torch.autocast(first.device.type, enabled=False):
            self.calls.append(self.reduce(tuple(a.detach().float() * real_pairs for a in attentions)))

    def values(self, width: Optional[int] = None) -> torch.Tensor:
        """The recorded values of all calls, rows concatenated in call order, the position axes (the last
        two) zero-padded to `width` (default: the widest call's)."""
        if not self.calls:
            raise ValueError("No forward pass of the transformer ran while attention was captured")
        width = max(v.shape[-1] for v in self.calls) if width is None else width
        return torch.cat([pad_positions(v, width) for v in self.calls])


def pad_positions(values: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the last two (position) axes of `values` to `width`."""
    missing = width - values.shape[-1]
    return torch.nn.functional.pad(values, (0, missing, 0, missing)) if missing > 0 else values


@contextmanager
def capturing(hf_model: torch.nn.Module, reduce: Optional[Reduce] = None) -> Iterator[CapturedAttention]:
    """Record the attention of every call of `hf_model` for the length of the context (see the module).

    Record forward passes only: a backward pass through checkpointed row chunks inside the context
    would recompute, and so record, those chunks again.
    """
    captured = CapturedAttention(reduce or stack_layers)
    config = hf_model.config
    implementation = getattr(config, "_attn_implementation_internal", None)
    # BertModel (and its kin) keep their own copy of the implementation, read per call to build the mask.
    has_own_copy = hasattr(hf_model, "attn_implementation")
    own_copy = getattr(hf_model, "attn_implementation", None)
    # The mask of the call under way (the view passes it by keyword); a call stopped early, like the
    # site capture's, is simply overwritten by the next.
    call: Dict[str, Optional[torch.Tensor]] = {}

    def ask_for_attention(module, args, kwargs):
        call["attention_mask"] = kwargs.get("attention_mask")
        return args, {**kwargs, "output_attentions": True}

    def record(module, args, output):
        attentions = getattr(output, "attentions", None)
        if attentions is None:
            raise ValueError(f"{type(module).__name__} returned no attention probabilities with "
                             "output_attentions=True: cannot capture its attention")
        captured.record(attentions, call.pop("attention_mask", None))

    handles = [hf_model.register_forward_pre_hook(ask_for_attention, with_kwargs=True),
               hf_model.register_forward_hook(record)]
    try:
        config._attn_implementation = "eager"
        if has_own_copy:
            hf_model.attn_implementation = "eager"
        with quiet_eager_fallback():
            yield captured
    finally:
        for handle in handles:
            handle.remove()
        config._attn_implementation_internal = implementation
        if has_own_copy:
            hf_model.attn_implementation = own_copy
