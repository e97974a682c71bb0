"""The Hugging Face module run with an attribution site: the tensor that attributions are taken at.

- ``"embeddings"``: the embedding layer's output (word + position + type embeddings after LayerNorm,
  what Captum's BERT tutorials hook with ``LayerIntegratedGradients(f, model.embeddings)``), the default;
- ``"word_embeddings"``: the word-embedding lookup alone (``inputs_embeds``);
- an integer ``k``: the hidden states after encoder layer ``k`` (``hidden_states[k]`` in Hugging Face
  terms, so ``0`` is the embedding output).

A forward hook on the site's module captures its value (as a leaf that requires grad) or replaces it with
given values; hooks are registered for one call and removed after it. Rows past `max_rows` run in chunks
under activation checkpointing, so memory is bounded whatever the length of a doc.
"""

from contextlib import ExitStack, contextmanager
import warnings
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.utils.checkpoint
from torch.nn.attention import SDPBackend, sdpa_kernel

from .encoding import EncodedBatch
from .guards import transformer_frozen

AttributionSite = Union[str, int]


class TransformerAccess:
    """What the views read of the pipeline's spacy-transformers component (`self.transformer`): its Hugging
    Face module, tokenizer and device, and the ids of the special tokens that frame a text."""

    transformer: Any

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.transformer.model.transformer

    @property
    def tokenizer(self):
        return self.transformer.model.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def structural_ids(self) -> List[int]:
        """Ids of special tokens that frame the text ([CLS], [SEP], <s>, …): baselines and references keep
        them."""
        tokenizer = self.tokenizer
        content = {tokenizer.unk_token_id, tokenizer.mask_token_id, tokenizer.pad_token_id}
        return [i for i in tokenizer.all_special_ids if i not in content]


# Forward + backward of MiniLM-L6 under bfloat16 autocast, about 4,096 wordpieces, 2 cores (float32: fused):
#   width      24     64    128    176    256
#   float32  1189   1193   1213   1307   1465 ms
#   fused     749    871    771    907    783 ms
#   math      444    658    648    821   1095 ms
MATH_ATTENTION_MAX_WIDTH = 192


class _Captured(Exception):
    """Stops a forward pass once the attribution site's value is captured."""


class TransformerRun:
    """How the view runs the transformer: its site, its dtype, its inputs for instance rows."""

    def __init__(self, hf_model: torch.nn.Module, attribute_at: AttributionSite, dtype: torch.dtype,
                 padding_side: str):
        self.hf_model = hf_model
        self.site = site_module(hf_model, attribute_at)
        self.start_layer = start_layer(hf_model, attribute_at)
        self.dtype = dtype
        self.padding_side = padding_side
        check_autocast(self.device, dtype)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @contextmanager
    def autocast(self, width: Optional[int] = None) -> Iterator[None]:
        """The pass under the view's dtype. A differentiated bfloat16 pass on a CPU over rows at most
        `MATH_ATTENTION_MAX_WIDTH` wordpieces wide (or of unknown width) takes attention by the math kernel:
        torch's fused CPU kernel is slow to differentiate in bfloat16 at short widths."""
        enabled = self.dtype != torch.float32
        with ExitStack() as stack:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled))
            if enabled and self.device.type == "cpu" and torch.is_grad_enabled() \
                    and (width is None or width <= MATH_ATTENTION_MAX_WIDTH):
                stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            yield

    def inputs(self, batch: EncodedBatch, ids: torch.Tensor, rows: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Keyword arguments of the Hugging Face call for `ids` on the batch's `rows` (all when None)."""
        def select(tensor):
            return tensor if rows is None else tensor[rows]

        kwargs = {"input_ids": ids, "attention_mask": select(batch.attention_mask)}
        if batch.token_type_ids is not None:
            kwargs["token_type_ids"] = select(batch.token_type_ids)
        return kwargs

    def capture(self, hf_inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The site's value for these inputs, without grad; the pass stops at the site."""
        captured: List[torch.Tensor] = []

        def hook(module, args, output):
            captured.append(site_value(output).detach())
            raise _Captured

        handle = self.site.register_forward_hook(hook)
        try:
            with torch.no_grad(), self.autocast():
                self.hf_model(**hf_inputs)
        except _Captured:
            pass
        finally:
            handle.remove()
        return captured[0].float()

    def run(self, batch: EncodedBatch, rows: torch.Tensor, ids: torch.Tensor, inputs: Optional[torch.Tensor],
            max_rows: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The last hidden state of `rows` (with wordpiece `ids`), the site set to `inputs` or, by default,
        to its real value captured as a leaf. Returns (site values at the batch width, hidden states)."""
        # Run only as wide as these rows' longest real sequence: the batch's padding beyond it is wasted
        # work (a third of the time on a CPU for length-sorted SST-2 groups); the head's alignment
        # needs the batch width back, and positions past the real ones carry nothing.
        width = batch.width
        if len(rows) and self.padding_side == "right":
            width = int(batch.attention_mask[rows].sum(1).max())
        hf_inputs = {k: v[:, :width] for k, v in self.inputs(batch, ids, rows).items()}
        if max_rows is not None and len(rows) > max_rows:
            if inputs is None:
                inputs = pad_width(self.capture(hf_inputs), batch.width).requires_grad_(torch.is_grad_enabled())
            hidden = torch.cat([self._run_rows({k: v[s:s + max_rows] for k, v in hf_inputs.items()},
                                               inputs[s:s + max_rows, :width], checkpointed=torch.is_grad_enabled())
                                for s in range(0, len(rows), max_rows)])
        else:
            inputs, hidden = self._run_capturing(hf_inputs, inputs, batch.width)
        return inputs, pad_width(hidden, batch.width)

    def _run_capturing(self, hf_inputs: Dict[str, torch.Tensor], inputs: Optional[torch.Tensor], full_width: int
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One transformer pass with `inputs` at the site, or the real values captured there. Returns the
        site's values at `full_width` (the caller's `inputs`, or a new leaf) and the last hidden state."""
        if inputs is not None and self.start_layer is not None:
            return inputs, self._run_from_layer(hf_inputs, inputs)
        captured: List[torch.Tensor] = []

        def hook(module, args, output):
            real = site_value(output)
            width = real.shape[1]
            if inputs is not None:
                full = inputs
            elif real.requires_grad:
                # Already on a path to something differentiated (e.g. a Captum layer hook): keep it.
                full = pad_width(real, full_width)
            else:
                full = pad_width(real.detach().float(), full_width).requires_grad_(torch.is_grad_enabled())
            captured.append(full)
            return replace_site_value(output, full[:, :width].to(real.dtype))

        handle = self.site.register_forward_hook(hook)
        try:
            with self.autocast(hf_inputs["input_ids"].shape[1]):
                hidden = self.hf_model(**hf_inputs).last_hidden_state
        finally:
            handle.remove()
        return captured[0], hidden.float()

    def _run_from_layer(self, hf_inputs: Dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """The last hidden state from given values after encoder layer k: only the layers above k run.

        For the length of the call the embedding layer's output is replaced by the values and the encoder's
        layer list holds only the layers above k (the attention mask and everything else as in a full
        pass), so perturbing the hidden states of a late layer (the information bottleneck, integrated
        gradients at a layer) does not pay for the layers below it again."""
        container, name, layers = encoder_layer_list(self.hf_model)

        def from_site(module, args, output):
            return inputs[:, :output.shape[1]].to(output.dtype)

        handle = self.hf_model.embeddings.register_forward_hook(from_site)
        setattr(container, name, torch.nn.ModuleList(list(layers)[self.start_layer:]))
        try:
            with self.autocast(hf_inputs["input_ids"].shape[1]):
                hidden = self.hf_model(**hf_inputs).last_hidden_state
        finally:
            setattr(container, name, layers)
            handle.remove()
        return hidden.float()

    def _run_rows(self, hf_inputs: Dict[str, torch.Tensor], inputs: torch.Tensor, checkpointed: bool) -> torch.Tensor:
        if checkpointed:
            return torch.utils.checkpoint.checkpoint(self._run_rows, hf_inputs, inputs, False, use_reentrant=False)
        # The backward pass recomputes a checkpointed chunk, maybe after the caller's frozen() has ended:
        # the recomputation must see the module as the forward pass did.
        with transformer_frozen(self.hf_model):
            return self._run_capturing(hf_inputs, inputs, inputs.shape[1])[1]


def pad_width(values: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad (rows, T, hidden) values to `width` positions."""
    return torch.nn.functional.pad(values, (0, 0, 0, width - values.shape[1])) if values.shape[1] < width else values


def check_autocast(device: torch.device, dtype: torch.dtype) -> None:
    """A clear error, before any doc, where torch cannot autocast to `dtype` on `device`: it raises a
    RuntimeError mid-pass on a CUDA device without bfloat16 or a device type without autocast, and on other
    devices warns and runs float32 while the setting says bfloat16."""
    if dtype == torch.float32:
        return
    name = str(dtype).replace("torch.", "")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.autocast(device.type, dtype=dtype)
        except RuntimeError as error:
            problem = str(error)
        else:
            problem = " ".join(str(w.message) for w in caught if "autocast" in str(w.message).lower())
    if problem:
        raise ValueError(f"dtype {name!r} is not supported on {device} (torch: {problem.strip()}). "
                         "Use dtype 'float32'.")


def site_module(hf_model: torch.nn.Module, attribute_at: AttributionSite) -> torch.nn.Module:
    """The module whose output is the attribution site."""
    embeddings = getattr(hf_model, "embeddings", None)
    if attribute_at == "embeddings" and embeddings is not None:
        return embeddings
    if attribute_at == "word_embeddings":
        return hf_model.get_input_embeddings()
    if isinstance(attribute_at, int) and not isinstance(attribute_at, bool):
        if attribute_at == 0 and embeddings is not None:
            return embeddings
        layers = encoder_layers(hf_model)
        if not 1 <= attribute_at <= len(layers):
            raise ValueError(f"attribute_at layer must be in 0..{len(layers)}, got {attribute_at}")
        return layers[attribute_at - 1]
    raise ValueError(
        f"attribute_at must be 'embeddings', 'word_embeddings' or a layer number, got {attribute_at!r}"
    )


def state_site(index: int) -> AttributionSite:
    """The site of state `index` of `DifferentiableView.states`: 0 is the word embeddings, ``i ≥ 1`` the
    input of encoder layer i (the output of layer i − 1; 1 is the embedding output), and L + 1 the last
    layer's output."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"a state index is an integer from 0, got {index!r}")
    return "word_embeddings" if index == 0 else index - 1


def encoder_layers(hf_model: torch.nn.Module) -> torch.nn.ModuleList:
    return encoder_layer_list(hf_model)[2]


def encoder_layer_list(hf_model: torch.nn.Module) -> Tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """(the module holding the encoder's layer list, the attribute's name, the list)."""
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        *parents, name = path.split(".")
        container = hf_model
        for part in parents:
            container = getattr(container, part, None)
        layers = getattr(container, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return container, name, layers
    raise ValueError(f"Cannot find the encoder layers of {type(hf_model).__name__}")


# Architectures whose encoder layers take the embedding layer's output as it is (no projection between),
# so that a pass can start above a layer site (`TransformerRun._run_from_layer`); others run every layer.
STARTS_ABOVE_LAYERS = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert")
# VMASK's BERT masks the embedding output in a pre-hook on layer 0, which a pass from above a layer skips.
STARTS_ABOVE_LAYERS += ("vmask_bert",)


def start_layer(hf_model: torch.nn.Module, attribute_at: AttributionSite) -> Optional[int]:
    """For a site after encoder layer k ≥ 1 of an architecture in `STARTS_ABOVE_LAYERS`: k, where a pass
    from values at the site starts; else None (the full pass runs, the site's output replaced)."""
    if not isinstance(attribute_at, int) or isinstance(attribute_at, bool) or attribute_at < 1:
        return None
    if getattr(hf_model.config, "model_type", None) not in STARTS_ABOVE_LAYERS or not hasattr(hf_model, "embeddings"):
        return None
    return attribute_at


def site_value(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def replace_site_value(output, value: torch.Tensor):
    return (value,) + tuple(output[1:]) if isinstance(output, tuple) else value
