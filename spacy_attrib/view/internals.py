"""Surgery inside the transformer, scoped to a `with` block: hooks registered, the block run, hooks removed.

`detached_nonlinearities` makes gradient × input a conservative relevance propagation (Ali et al. 2022,
"XAI for Transformers: Better Explanations through Conservative Propagation", ICML). Each part keeps the
forward values bit for bit (a hooked module returns ``y.detach() + (z − z.detach())``, where ``z`` is the
linearised surrogate: its value is ``y``, its gradient that of ``z``) and changes only the backward pass:

- ``attention`` (the AH-rule): the attention probabilities are constants, so a head is linear in its values;
- ``layer_norm`` (the LN-rule): every LayerNorm's standard deviation is a constant, so LayerNorm is linear
  (centring, scaling by γ/σ, adding β);
- ``activation``: the feed-forward non-linearity f (GELU) is the identity rule of LRP, ``f(x) = x · (f(x)/x)``
  with the ratio a constant, so the relevance of f's output passes unchanged to its input (the official code of
  Ali et al. has no feed-forward block; this is how AttnLRP, Achtibat et al. 2024, treats element-wise
  non-linearities).

With all three, the transformer between the attribution site and its output is linear in the site's values
(plus biases), so Σ gradient × input equals the output less what the biases absorb.

The modules to hook are facts of each architecture, kept as data in `ARCHITECTURES` (keyed by the Hugging
Face ``config.model_type``); an architecture not in the table fails loudly, naming what to register.
"""

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List

import torch

from .guards import quiet_eager_fallback

PARTS = ("attention", "layer_norm", "activation")


@dataclass(frozen=True)
class Architecture:
    """Where things are inside an encoder, as module paths.

    layers: the ModuleList of encoder layers, from the model's root.
    attention_probs: within a layer, the module applied to the attention probabilities (their dropout,
        the identity in eval mode), whose output is what the values are mixed with.
    activation: within a layer, the feed-forward non-linearity (a module).
    eager_attention_kwargs: keyword arguments of the model's forward that make its attention take the
        explicit (eager) path, where the probabilities exist as a tensor (SDPA fuses them away).
    block_modules: within a layer, the modules a layer-by-layer relevance rule reads (`recording`): the
        self-attention and its query/key/value projections, each residual block's dense layer and LayerNorm
        (``attention_dense``, ``attention_norm``, ``output_dense``, ``output_norm``), the feed-forward
        ``intermediate`` dense layer.
    """

    layers: str
    attention_probs: str
    activation: str
    eager_attention_kwargs: Callable[[torch.nn.Module], Dict[str, torch.Tensor]]
    block_modules: Dict[str, str]


def _unit_head_mask(hf_model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    # Hugging Face BERT-family SDPA attention falls back to the eager path when a head mask is given; a
    # mask of ones multiplies the probabilities by 1, which changes no value.
    config = hf_model.config
    device = next(hf_model.parameters()).device
    return {"head_mask": torch.ones((config.num_hidden_layers, config.num_attention_heads), device=device)}


_BERT_LIKE = Architecture(
    "encoder.layer", "attention.self.dropout", "intermediate.intermediate_act_fn", _unit_head_mask,
    {"attention": "attention.self", "query": "attention.self.query", "key": "attention.self.key",
     "value": "attention.self.value", "attention_dense": "attention.output.dense",
     "attention_norm": "attention.output.LayerNorm", "intermediate": "intermediate.dense",
     "output_dense": "output.dense", "output_norm": "output.LayerNorm"})
ARCHITECTURES: Dict[str, Architecture] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "vmask_bert": _BERT_LIKE,  # spacy_attrib.methods.masks.vmask: a BertModel with a mask before layer 0
}


def architecture_of(hf_model: torch.nn.Module) -> Architecture:
    """The module layout of `hf_model`, with a clear error for an architecture not in `ARCHITECTURES`."""
    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"No module layout is known for the transformer architecture {model_type!r} "
            f"({type(hf_model).__name__}); known: {', '.join(sorted(ARCHITECTURES))}. Add an "
            "`Architecture` (encoder layers, attention-probability module, feed-forward activation) to "
            "spacy_attrib.view.internals.ARCHITECTURES under its config.model_type.")
    return ARCHITECTURES[model_type]


@dataclass
class Record:
    """A module's first positional input and its output (the first element of a tuple output) in one pass."""

    module: torch.nn.Module
    input: torch.Tensor
    output: torch.Tensor


@contextmanager
def recording(hf_model: torch.nn.Module) -> Iterator[List[Dict[str, Record]]]:
    """Per encoder layer, the `Architecture.block_modules` of the last forward pass in the block, by role;
    the tensors stay in the autograd graph. Hooks are removed on exit."""
    architecture = architecture_of(hf_model)
    layers = list(submodule(hf_model, architecture.layers))
    records: List[Dict[str, Record]] = [{} for _ in layers]
    with ExitStack() as stack:
        for layer, layer_records in zip(layers, records):
            for role, path in architecture.block_modules.items():
                def hook(module, args, output, role=role, layer_records=layer_records):
                    value = output[0] if isinstance(output, tuple) else output
                    layer_records[role] = Record(module, args[0], value)

                stack.callback(submodule(layer, path).register_forward_hook(hook).remove)
        yield records


def submodule(root: torch.nn.Module, path: str) -> torch.nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError as error:
        raise ValueError(f"{type(root).__name__} has no module {path!r} (a function, not a module, cannot be "
                         f"hooked): {error}") from error


def _value_kept(output: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """`output`'s values with `surrogate`'s gradient: (surrogate − surrogate) is exactly zero."""
    return output.detach() + (surrogate - surrogate.detach())


def _layer_norm_std_detached(module: torch.nn.LayerNorm, args, output):
    x = args[0]
    dims = tuple(range(-len(module.normalized_shape), 0))
    mean = x.mean(dims, keepdim=True)
    std = (x.var(dims, unbiased=False, keepdim=True) + module.eps).sqrt()
    linear = (x - mean) / std.detach()
    if module.weight is not None:
        linear = linear * module.weight
    if module.bias is not None:
        linear = linear + module.bias
    return _value_kept(output, linear)


def _identity_rule(module, args, output):
    x = args[0]
    nonzero = x != 0
    ratio = torch.where(nonzero, output / torch.where(nonzero, x, torch.ones_like(x)), torch.zeros_like(x))
    return _value_kept(output, x * ratio.detach())


@contextmanager
def detached_nonlinearities(hf_model: torch.nn.Module, parts: Iterable[str] = PARTS) -> Iterator[None]:
    """Within the block, `hf_model`'s backward pass treats the chosen `parts` (see the module docstring) as
    constants; forward values are unchanged. Every hook is removed on exit, error or not.

    Raises ValueError for an unknown part or architecture, and RuntimeError after a forward pass in which an
    attention hook did not run (the model's attention did not take the path the table describes).
    """
    parts = list(parts)
    for part in parts:
        if part not in PARTS:
            raise ValueError(f"detach parts must be among {PARTS}, got {part!r}")
    with ExitStack() as stack:
        def register(handle) -> None:
            stack.callback(handle.remove)

        if "layer_norm" in parts:
            for module in hf_model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    register(module.register_forward_hook(_layer_norm_std_detached))
        if "attention" in parts or "activation" in parts:
            architecture = architecture_of(hf_model)
            layers = list(submodule(hf_model, architecture.layers))
        if "activation" in parts:
            for layer in layers:
                register(submodule(layer, architecture.activation).register_forward_hook(_identity_rule))
        if "attention" in parts:
            fired: List[int] = []
            for layer in layers:
                register(submodule(layer, architecture.attention_probs).register_forward_hook(
                    lambda module, args, output: (fired.append(1), output.detach())[1]))

            def eager(module, args, kwargs):
                fired.clear()
                return args, {**kwargs, **architecture.eager_attention_kwargs(module)}

            def check(module, args, kwargs, output):
                if len(fired) != len(layers):
                    raise RuntimeError(
                        f"Attention probabilities were detached in {len(fired)} of {len(layers)} layers of "
                        f"{type(module).__name__}: its attention no longer takes the path "
                        "spacy_attrib.view.internals.ARCHITECTURES describes")

            register(hf_model.register_forward_pre_hook(eager, with_kwargs=True))
            register(hf_model.register_forward_hook(check, with_kwargs=True))
        with quiet_eager_fallback():
            yield
