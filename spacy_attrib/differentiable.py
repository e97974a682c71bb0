"""A spaCy `transformer → head` pipeline seen as one torch-differentiable function.

This is the only module that knows spacy-transformers and thinc internals. It re-uses the transformer's
own span getter, tokenizer and alignment, runs the Hugging Face module directly (so that torch autograd
reaches its inputs), and runs the head's own thinc model on the result through its `TransformerListener`,
wrapped in a `torch.autograd.Function` whose backward is the head's thinc backprop. Any torch code,
Captum included, can therefore differentiate the head's scores with respect to

- ``"embeddings"``: the embedding layer's output (word + position + type embeddings after LayerNorm,
  what Captum's BERT tutorials hook with ``LayerIntegratedGradients(f, model.embeddings)``), the default;
- ``"word_embeddings"``: the word-embedding lookup alone (``inputs_embeds``);
- an integer ``k``: the hidden states after encoder layer ``k`` (``hidden_states[k]`` in Hugging Face
  terms, so ``0`` is the embedding output).

The view leaves the model as it found it: the module is put in eval mode (no dropout) for each forward and
its mode restored after, parameters are excluded from autograd, the head's dropout is set to zero and its
thinc gradients are removed after each backprop, and weights are never written.
"""

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy
import torch
import torch.utils.checkpoint
from spacy.language import Language
from spacy.tokens import Doc
from spacy_transformers.align import get_alignment, get_alignment_via_offset_mapping
from spacy_transformers.data_classes import FullTransformerBatch, TransformerData, WordpieceBatch
from spacy_transformers.layers.listener import TransformerListener
from spacy_transformers.layers.transformer_model import huggingface_tokenize
from spacy_transformers.pipeline_component import Transformer
from spacy_transformers.truncate import truncate_oversize_splits
from thinc.api import Model, torch2xp, xp2torch
from transformers.file_utils import ModelOutput

AttributionSite = Union[str, int]


def _single_threaded_torch() -> None:
    torch.set_num_threads(1)


# `nlp.pipe(n_process=…)` forks. A child that uses torch's OpenMP pool, initialised in the parent, hangs
# (with or without attribution components); one thread per child is also what torch's DataLoader workers
# use.
os.register_at_fork(after_in_child=_single_threaded_torch)
OUTPUTS = ("log_prob", "prob", "logit")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SUPPORTED_HEADS = ("textcat", "textcat_multilabel", "tagger")


@dataclass
class EncodedBatch:
    """Docs tokenized into wordpiece rows the way the pipeline's transformer tokenizes them.

    A doc covers ``rows[i]`` consecutive rows (one per span from the span getter; long docs have several
    overlapping windows, empty docs none). ``doc_data[i]`` carries the doc's wordpieces and its alignment
    from spaCy tokens to positions in the doc's rows flattened (row-major, padded length ``T``).
    """

    docs: List[Doc]
    input_ids: torch.Tensor  # (n_rows, T)
    attention_mask: torch.Tensor  # (n_rows, T)
    token_type_ids: Optional[torch.Tensor]  # (n_rows, T)
    doc_data: List[TransformerData]
    row_starts: List[int]
    rows: List[int]

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    def row_index(self, doc_indices: Sequence[int]) -> torch.Tensor:
        """Indices of the rows of each doc in `doc_indices`, concatenated: how to lay out instances."""
        index = [r for i in doc_indices for r in range(self.row_starts[i], self.row_starts[i] + self.rows[i])]
        return torch.tensor(index, dtype=torch.long, device=self.input_ids.device)


@dataclass
class ViewOutput:
    """Scores of a forward pass over instances (copies of the batch's docs, one per entry of `doc_index`).

    `scores` is the attributed output (``log_prob``, ``prob`` or ``logit``), shaped
    (n_instances, positions, labels): one position for doc-level heads, one per token for the tagger (padded
    with zeros past a doc's length). `inputs` is the tensor at the attribution site that the scores were
    computed from, shaped (n_instance_rows, T, hidden): the given override, or the captured real value.
    `logits` are the head's scores before its output activation, shaped like `scores`.
    """

    scores: torch.Tensor
    logits: torch.Tensor
    inputs: torch.Tensor
    doc_index: List[int]


class DifferentiableView:
    """The head named `head` of `nlp`, with the transformer it listens to, as a differentiable function.

    nlp (Language): a pipeline with a spacy-transformers `transformer` and a head listening to it.
    head (Optional[str]): the head component's name; by default the single supported component listening
        to the transformer.
    output (str): the attributed output: ``log_prob`` (default, avoids softmax saturation), ``prob`` or
        ``logit``. Exclusive textcat and tagger normalise with softmax, multilabel textcat with a sigmoid.
    attribute_at (Union[str, int]): the attribution site (see the module docstring).
    dtype (str): ``float32``, or ``bfloat16`` to run the transformer under autocast.
    """

    def __init__(self, nlp: Language, head: Optional[str] = None, *, output: str = "log_prob",
                 attribute_at: AttributionSite = "embeddings", dtype: str = "float32"):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
        self.nlp = nlp
        self.transformer_name, self.transformer = find_transformer(nlp)
        self.head_name = head if head is not None else default_head(nlp, self.transformer_name)
        self.head = nlp.get_pipe(self.head_name) if self.head_name in nlp.pipe_names else None
        if self.head is None:
            raise ValueError(f"No component named {self.head_name!r} in the pipeline {nlp.pipe_names}")
        self.listeners = listeners_of(self.head.model, self.transformer_name)
        if not self.listeners:
            raise ValueError(
                f"Component {self.head_name!r} does not listen to the transformer "
                f"{self.transformer_name!r}: attribution needs a head whose model contains a "
                "TransformerListener (spacy-transformers.TransformerListener.v1)."
            )
        self.output = output
        self.dtype = DTYPES[dtype]
        self.attribute_at = attribute_at
        self.labels: Tuple[str, ...] = tuple(self.head.labels)
        self.per_token = is_per_token(self.head)
        self.exclusive = is_exclusive(self.head)
        self._site_module = site_module(self.hf_model, attribute_at)

    # -- what the transformer is -------------------------------------------------------------------
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
        """Ids of special tokens that frame the text ([CLS], [SEP], <s>, …): baselines keep them."""
        tokenizer = self.tokenizer
        content = {tokenizer.unk_token_id, tokenizer.mask_token_id, tokenizer.pad_token_id}
        return [i for i in tokenizer.all_special_ids if i not in content]

    def token_id(self, token: str) -> int:
        """The id of a special token such as ``[PAD]``, with a clear error where the tokenizer has none."""
        attr = {"pad": "pad_token_id", "mask": "mask_token_id", "unk": "unk_token_id"}[token]
        value = getattr(self.tokenizer, attr)
        if value is None:
            raise ValueError(f"The tokenizer of {self.transformer_name!r} has no {token} token")
        return int(value)

    # -- tokenization, as the transformer component does it ----------------------------------------
    def encode(self, docs: Sequence[Doc]) -> EncodedBatch:
        """Tokenize `docs` with the transformer's span getter, tokenizer and alignment."""
        docs = list(docs)
        model = self.transformer.model
        nested_spans = model.attrs["get_spans"](docs)
        flat_spans = [span for doc_spans in nested_spans for span in doc_spans]
        device = self.device
        if not flat_spans:
            empty = torch.zeros((0, 0), dtype=torch.long, device=device)
            return EncodedBatch(docs, empty, empty, None, [TransformerData.empty() for _ in docs],
                                [0] * len(docs), [0] * len(docs))
        tokenizer = self.tokenizer
        encoding = huggingface_tokenize(tokenizer, [span.text for span in flat_spans])
        wordpieces = WordpieceBatch.from_batch_encoding(encoding)
        if "offset_mapping" in encoding:
            align = get_alignment_via_offset_mapping(flat_spans, encoding["offset_mapping"])
        else:
            align = get_alignment(flat_spans, wordpieces.strings, tokenizer.all_special_tokens)
        wordpieces, align = truncate_oversize_splits(wordpieces, align, tokenizer.model_max_length)
        # A zero-width placeholder output lets spacy-transformers split wordpieces and alignment per doc.
        placeholder = ModelOutput(last_hidden_state=torch.zeros((len(flat_spans), 0)))
        full = FullTransformerBatch(spans=nested_spans, wordpieces=wordpieces,
                                    model_output=placeholder, align=align)
        rows = [len(doc_spans) for doc_spans in nested_spans]
        starts = numpy.concatenate([[0], numpy.cumsum(rows)[:-1]]).astype(int).tolist()

        def as_tensor(array) -> torch.Tensor:
            return torch.as_tensor(numpy.asarray(array), dtype=torch.long, device=device)

        token_types = None if wordpieces.token_type_ids is None else as_tensor(wordpieces.token_type_ids)
        return EncodedBatch(docs, as_tensor(wordpieces.input_ids), as_tensor(wordpieces.attention_mask),
                            token_types, full.split_by_doc(), starts, rows)

    # -- the function ------------------------------------------------------------------------------
    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Eval mode, parameters out of autograd and head dropout off; all restored on exit."""
        module = self.hf_model
        was_training = module.training
        requires_grad = [(p, p.requires_grad) for p in module.parameters()]
        dropout_nodes = [(node, node.attrs["dropout_rate"]) for node in self.head.model.walk()
                         if "dropout_rate" in node.attrs]
        try:
            module.eval()
            for param, _ in requires_grad:
                param.requires_grad_(False)
            for node, _ in dropout_nodes:
                node.attrs["dropout_rate"] = 0.0
            yield
        finally:
            module.train(was_training)
            for param, flag in requires_grad:
                param.requires_grad_(flag)
            for node, rate in dropout_nodes:
                node.attrs["dropout_rate"] = rate

    def capture(self, batch: EncodedBatch, input_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The tensor at the attribution site for `input_ids` (default: the batch's own), without grad."""
        ids = batch.input_ids if input_ids is None else input_ids
        with self.frozen():
            return self._capture(self._hf_inputs(batch, ids, None))

    def _capture(self, hf_inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        captured: List[torch.Tensor] = []

        def hook(module, args, output):
            captured.append(site_value(output).detach())
            raise _Captured

        handle = self._site_module.register_forward_hook(hook)
        try:
            with torch.no_grad(), self.autocast():
                self.hf_model(**hf_inputs)
        except _Captured:
            pass
        finally:
            handle.remove()
        return captured[0].float()

    def forward(self, batch: EncodedBatch, inputs: Optional[torch.Tensor] = None, *,
                doc_index: Optional[Sequence[int]] = None, input_ids: Optional[torch.Tensor] = None,
                max_rows: Optional[int] = None) -> ViewOutput:
        """The attributed output for instances of the batch's docs, differentiable w.r.t. the inputs.

        inputs: values at the attribution site for every instance row (shape (n_rows, T, hidden)); by
            default the real ones, captured as a leaf that requires grad when grad mode is on.
        doc_index: which doc each instance copies (default: each doc once, in order); instance rows are
            the doc's rows, concatenated in instance order (see `EncodedBatch.row_index`).
        input_ids: wordpiece ids for the instance rows, for perturbed inputs (default: the docs' own).
        max_rows: run the transformer at most this many rows at a time. Past it, rows run in chunks under
            activation checkpointing: the backward pass recomputes one chunk at a time (rows are
            independent, so this is exact), which bounds memory whatever the length of a doc.
        Call inside `frozen()`.
        """
        doc_index = list(range(len(batch.docs))) if doc_index is None else list(doc_index)
        rows = batch.row_index(doc_index)
        ids = batch.input_ids[rows] if input_ids is None else input_ids
        # Run only as wide as these rows' longest real sequence: the batch's padding beyond it is wasted
        # work (a third of the time on a CPU for length-sorted SST-2 groups); the head's alignment
        # needs the batch width back, and positions past the real ones carry nothing.
        width = batch.width
        if len(rows) and self.tokenizer.padding_side == "right":
            width = int(batch.attention_mask[rows].sum(1).max())
        hf_inputs = {k: v[:, :width] for k, v in self._hf_inputs(batch, ids, rows).items()}
        if max_rows is not None and len(rows) > max_rows:
            if inputs is None:
                inputs = _pad_width(self._capture(hf_inputs), batch.width).requires_grad_(torch.is_grad_enabled())
            hidden = torch.cat([self._run_rows({k: v[s:s + max_rows] for k, v in hf_inputs.items()},
                                               inputs[s:s + max_rows, :width], checkpointed=torch.is_grad_enabled())
                                for s in range(0, len(rows), max_rows)])
        else:
            inputs, hidden = self._run_capturing(hf_inputs, inputs, batch.width)
        hidden = _pad_width(hidden, batch.width)
        logits = HeadFunction.apply(hidden, self, batch, doc_index)
        return ViewOutput(self._normalize(logits), logits, inputs, doc_index)

    def _run_capturing(self, hf_inputs: Dict[str, torch.Tensor], inputs: Optional[torch.Tensor], full_width: int
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One transformer pass with `inputs` at the site, or the real values captured there. Returns the
        site's values at `full_width` (the caller's `inputs`, or a new leaf) and the last hidden state."""
        captured: List[torch.Tensor] = []

        def hook(module, args, output):
            real = site_value(output)
            width = real.shape[1]
            if inputs is not None:
                full = inputs
            elif real.requires_grad:
                # Already on a path to something differentiated (e.g. a Captum layer hook): keep it.
                full = _pad_width(real, full_width)
            else:
                full = _pad_width(real.detach().float(), full_width).requires_grad_(torch.is_grad_enabled())
            captured.append(full)
            return replace_site_value(output, full[:, :width].to(real.dtype))

        handle = self._site_module.register_forward_hook(hook)
        try:
            with self.autocast():
                hidden = self.hf_model(**hf_inputs).last_hidden_state
        finally:
            handle.remove()
        return captured[0], hidden.float()

    def _run_rows(self, hf_inputs: Dict[str, torch.Tensor], inputs: torch.Tensor, checkpointed: bool) -> torch.Tensor:
        if checkpointed:
            return torch.utils.checkpoint.checkpoint(self._run_rows, hf_inputs, inputs, False, use_reentrant=False)
        return self._run_capturing(hf_inputs, inputs, inputs.shape[1])[1]

    def _hf_inputs(self, batch: EncodedBatch, ids: torch.Tensor, rows: Optional[torch.Tensor]) -> Dict:
        def select(tensor):
            return tensor if rows is None else tensor[rows]

        kwargs = {"input_ids": ids, "attention_mask": select(batch.attention_mask)}
        if batch.token_type_ids is not None:
            kwargs["token_type_ids"] = select(batch.token_type_ids)
        return kwargs

    @contextmanager
    def autocast(self) -> Iterator[None]:
        enabled = self.dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled):
            yield

    def _normalize(self, logits: torch.Tensor) -> torch.Tensor:
        if self.output == "logit":
            return logits
        if self.exclusive:
            return torch.log_softmax(logits, -1) if self.output == "log_prob" else torch.softmax(logits, -1)
        return torch.nn.functional.logsigmoid(logits) if self.output == "log_prob" else torch.sigmoid(logits)

    # -- the head, in thinc ------------------------------------------------------------------------
    def head_begin_update(self, batch: EncodedBatch, hidden: torch.Tensor, doc_index: List[int]):
        """Run the head's thinc model on `hidden` (instance rows). Returns logits and a backprop that
        maps d logits to d hidden. Output activations are bypassed (see `logit_outputs`)."""
        hidden_xp = torch2xp(hidden.detach())
        outputs, offsets, start = [], [], 0
        for i in doc_index:
            n = batch.rows[i]
            template = batch.doc_data[i]
            if n == 0:
                outputs.append(template)
            else:
                outputs.append(TransformerData(
                    wordpieces=template.wordpieces, align=template.align,
                    model_output=ModelOutput(last_hidden_state=hidden_xp[start:start + n])))
            offsets.append(start)
            start += n
        docs = [batch.docs[i] for i in doc_index]
        batch_id = TransformerListener.get_batch_id(docs)
        model: Model = self.head.model
        with logit_outputs(model), thinc_gradients_discarded(model):
            for listener in self.listeners:
                listener.receive(batch_id, outputs, None)
            try:
                scores, backprop_head = model.begin_update(docs)
            finally:
                for listener in self.listeners:
                    listener.receive(None, None, None)
        logits = self._pad_scores(scores, docs)

        def backprop(d_logits: torch.Tensor) -> torch.Tensor:
            d_hidden = torch.zeros_like(hidden)
            d_xp = torch2xp(d_logits.detach().contiguous())
            d_scores = [d_xp[j, :len(doc)] for j, doc in enumerate(docs)] if self.per_token else d_xp[:, 0]

            def receive_gradient(d_trf_datas: List[TransformerData]) -> List[Doc]:
                for j, d_data in enumerate(d_trf_datas):
                    if "last_hidden_state" in d_data.model_output:
                        d_state = xp2torch(d_data.model_output.last_hidden_state)
                        d_hidden[offsets[j]:offsets[j] + d_state.shape[0]] += d_state.to(d_hidden)
                return docs

            # The listener's backprop is cleared after each call, so it is handed over on every backward;
            # trfs2arrays skips docs without wordpieces, hence the doc-order bookkeeping above.
            live = [j for j, i in enumerate(doc_index) if batch.rows[i] > 0]
            with logit_outputs(model), thinc_gradients_discarded(model):
                for listener in self.listeners:
                    listener.receive(batch_id, outputs, lambda d: receive_gradient(_expand(d, live, len(docs))))
                backprop_head(d_scores)
            return d_hidden

        return logits, backprop

    def _pad_scores(self, scores, docs: List[Doc]) -> torch.Tensor:
        """(n_instances, positions, labels): one position for doc-level heads, one per token otherwise."""
        if not self.per_token:
            return xp2torch(scores).float().unsqueeze(1).to(self.device)
        width = max([len(doc) for doc in docs] + [1])
        padded = torch.zeros((len(docs), width, len(self.labels)), device=self.device)
        for j, doc_scores in enumerate(scores):
            if len(doc_scores):
                padded[j, :len(doc_scores)] = xp2torch(doc_scores).float().to(self.device)
        return padded


def _expand(d_trf_datas: List[TransformerData], live: List[int], n: int) -> List[TransformerData]:
    """Put the gradients of docs with wordpieces back at their positions in the instance list."""
    if len(d_trf_datas) == n:
        return d_trf_datas
    expanded = [TransformerData.empty() for _ in range(n)]
    for j, d_data in zip(live, d_trf_datas):
        expanded[j] = d_data
    return expanded


def _pad_width(values: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad (rows, T, hidden) values to `width` positions."""
    return torch.nn.functional.pad(values, (0, 0, 0, width - values.shape[1])) if values.shape[1] < width else values


class HeadFunction(torch.autograd.Function):
    """torch view of the head's thinc model: forward runs it, backward runs its thinc backprop."""

    @staticmethod
    def forward(ctx, hidden, view: DifferentiableView, batch: EncodedBatch, doc_index: List[int]):
        logits, backprop = view.head_begin_update(batch, hidden, doc_index)
        ctx.backprop = backprop
        return logits

    @staticmethod
    def backward(ctx, d_logits):
        return ctx.backprop(d_logits), None, None, None


class _Captured(Exception):
    """Stops a forward pass once the attribution site's value is captured."""


# -- where things are in the pipeline --------------------------------------------------------------
def find_transformer(nlp: Language) -> Tuple[str, Transformer]:
    found = [(name, pipe) for name, pipe in nlp.pipeline if isinstance(pipe, Transformer)]
    if not found:
        raise ValueError(
            "The pipeline has no spacy-transformers 'transformer' component "
            f"(components: {nlp.pipe_names}); attribution methods explain transformer pipelines."
        )
    if len(found) > 1:
        raise ValueError(f"The pipeline has several transformers {[n for n, _ in found]}; not supported")
    return found[0]


def listeners_of(model: Model, transformer_name: str) -> List[TransformerListener]:
    return [node for node in model.walk() if isinstance(node, TransformerListener)
            and node.upstream_name in ("*", transformer_name)]


def default_head(nlp: Language, transformer_name: str) -> str:
    """The single supported component that listens to the transformer."""
    heads = [name for name, pipe in nlp.pipeline
             if isinstance(getattr(pipe, "model", None), Model) and listeners_of(pipe.model, transformer_name)]
    supported = [name for name in heads if is_supported_head(nlp.get_pipe(name))]
    if len(supported) == 1:
        return supported[0]
    if not supported:
        raise ValueError(
            f"No supported head listens to the transformer {transformer_name!r} "
            f"(listening: {heads}; supported kinds: {SUPPORTED_HEADS}). Name one with `target`."
        )
    raise ValueError(f"Several heads listen to the transformer: {supported}. Choose one with `target`.")


def is_supported_head(pipe) -> bool:
    from spacy.pipeline import Tagger, TextCategorizer

    return isinstance(pipe, (TextCategorizer, Tagger))


def is_per_token(pipe) -> bool:
    from spacy.pipeline import Tagger

    return isinstance(pipe, Tagger)


def is_exclusive(pipe) -> bool:
    from spacy.pipeline import MultiLabel_TextCategorizer

    return not isinstance(pipe, MultiLabel_TextCategorizer)


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


def encoder_layers(hf_model: torch.nn.Module) -> torch.nn.ModuleList:
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        module = hf_model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, torch.nn.ModuleList):
            return module
    raise ValueError(f"Cannot find the encoder layers of {type(hf_model).__name__}")


def site_value(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def replace_site_value(output, value: torch.Tensor):
    return (value,) + tuple(output[1:]) if isinstance(output, tuple) else value


# -- thinc head surgery, always undone -------------------------------------------------------------
def _affine_forward(model: Model, X, is_train: bool) -> Tuple[object, Callable]:
    """A Softmax layer's affine part: logits instead of probabilities. Its backprop maps d logits to
    d input, which is what thinc's Softmax backprop already does (it assumes a cross-entropy loss)."""
    W, b = model.get_param("W"), model.get_param("b")
    Y = model.ops.affine(X, W, b) / model.attrs.get("softmax_temperature", 1.0)

    def backprop(dY):
        return model.ops.gemm(dY, W) / model.attrs.get("softmax_temperature", 1.0)

    return Y, backprop


def _identity_forward(model: Model, X, is_train: bool) -> Tuple[object, Callable]:
    return X, lambda dY: dY


@contextmanager
def logit_outputs(model: Model) -> Iterator[None]:
    """Make the head return logits: Softmax layers become affine, sigmoid activations identity."""
    swapped = []
    for node in model.walk():
        if node.name == "softmax" and node.has_param("W"):
            swapped.append((node, node._func))
            node._func = _affine_forward
        elif node.name in ("logistic", "sigmoid_activation"):
            swapped.append((node, node._func))
            node._func = _identity_forward
    try:
        yield
    finally:
        for node, func in swapped:
            node._func = func


@contextmanager
def thinc_gradients_discarded(model: Model) -> Iterator[None]:
    """Remove the parameter gradients that a head's backprop leaves in thinc's param server, keeping any
    the user had accumulated before."""
    before = {(node.id, name) for node in model.walk() for name in node.grad_names}
    try:
        yield
    finally:
        for node in model.walk():
            for name in node.grad_names:
                if (node.id, name) not in before:
                    # thinc has no public way to drop a gradient; its ParamServer keeps them in `_grads`.
                    node._params._grads.pop((node.id, name), None)
