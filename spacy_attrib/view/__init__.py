"""A spaCy `transformer → head` pipeline seen as one torch-differentiable function.

This package is the only place that knows spacy-transformers and thinc internals. It re-uses the
transformer's own span getter, tokenizer and alignment (`encoding`), runs the Hugging Face module directly
with an attribution site (`transformer`), so that torch autograd reaches the site's values, and runs the
head's own thinc model on the result through its `TransformerListener` (`heads`: one module per head
kind), wrapped in a `torch.autograd.Function` whose backward is the head's thinc backprop. Any torch code,
Captum included, can therefore differentiate the head's outputs with respect to the site's values.

The view leaves the model as it found it (`guards`): eval mode, parameters out of autograd, head dropout
zero and listener `grad_factor` 1 for the length of `frozen()`, thinc gradients removed after each
backprop, weights never written.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Type

import torch
from spacy.language import Language
from spacy.tokens import Doc
from spacy_transformers.layers.listener import TransformerListener
from spacy_transformers.pipeline_component import Transformer
from thinc.api import Model

from ..targets import LabelsSetting, Target
from . import attention, guards, internals
from .embedding import EmbeddingView
from .encoding import EncodedBatch, encode
from .heads import SUPPORTED_HEADS, Head, HeadFunction, head_kind
from .heads.tagger import TaggerHead
from .transformer import (AttributionSite, TransformerAccess, TransformerRun, check_autocast, encoder_layers,
                          state_site)

OUTPUTS = ("log_prob", "prob", "logit")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class ViewOutput:
    """Outputs of a forward pass over instances (copies of the batch's docs, one per entry of `doc_index`).

    `scores` is the attributed output (``log_prob``, ``prob`` or ``logit``), shaped
    (n_instances, positions, labels): one position for doc-level heads, one per token for the tagger, one
    per entity for the ner and per suggested span for spancat (zeros past a doc's own). `inputs` is the
    tensor at the attribution site that the scores were computed from, shaped (n_instance_rows, T,
    hidden): the given override, or the captured real value. `logits` are the head's raw scores (before
    its output activation; the parser's per-step action scores).
    """

    scores: torch.Tensor
    logits: torch.Tensor
    inputs: torch.Tensor
    doc_index: List[int]


class DifferentiableView(TransformerAccess):
    """The head named `head` of `nlp`, with the transformer it listens to, as a differentiable function.

    nlp (Language): a pipeline with a spacy-transformers `transformer` and a head listening to it.
    head (Optional[str]): the head component's name; by default the single supported component listening
        to the transformer. Supported kinds: textcat, textcat_multilabel, tagger, ner, spancat.
    output (str): the attributed output: ``log_prob`` (default, avoids softmax saturation), ``prob`` or
        ``logit``. Each head kind defines it for its targets (see `spacy_attrib.view.heads`).
    attribute_at (Union[str, int]): the attribution site (see `spacy_attrib.view.transformer`).
    dtype (str): ``float32``, or ``bfloat16`` to run the transformer under autocast.
    """

    def __init__(self, nlp: Language, head: Optional[str] = None, *, output: str = "log_prob",
                 attribute_at: AttributionSite = "embeddings", dtype: str = "float32"):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
        guards.register_fork_guard()
        self.nlp = nlp
        self.transformer_name, self.transformer = find_transformer(nlp)
        self.head_name = head if head is not None else default_head(nlp, self.transformer_name)
        kind = head_kind_of(nlp, self.head_name)
        pipe = nlp.get_pipe(self.head_name)
        listeners = listeners_of(pipe.model, self.transformer_name) if isinstance(pipe.model, Model) else []
        if not listeners:
            raise ValueError(
                f"Component {self.head_name!r} does not listen to the transformer "
                f"{self.transformer_name!r}: attribution needs a head whose model contains a "
                "TransformerListener (spacy-transformers.TransformerListener.v1)."
            )
        self.output = output
        self.attribute_at = attribute_at
        self.run = TransformerRun(self.transformer.model.transformer, attribute_at, DTYPES[dtype],
                                  self.tokenizer.padding_side)
        self._runs: Dict[AttributionSite, TransformerRun] = {attribute_at: self.run}
        self.head: Head = kind(self.head_name, pipe, listeners, self.device)

    # -- what the pipeline is ------------------------------------------------------------------------
    @property
    def labels(self) -> Tuple[str, ...]:
        return self.head.labels

    @property
    def per_token(self) -> bool:
        return isinstance(self.head, TaggerHead)

    @property
    def exclusive(self) -> bool:
        return bool(getattr(self.head, "exclusive", True))

    def token_id(self, token: str) -> int:
        """The id of a special token such as ``[PAD]``, with a clear error where the tokenizer has none."""
        attr = {"pad": "pad_token_id", "mask": "mask_token_id", "unk": "unk_token_id"}[token]
        value = getattr(self.tokenizer, attr)
        if value is None:
            raise ValueError(f"The tokenizer of {self.transformer_name!r} has no {token} token")
        return int(value)

    # -- tokenization, as the transformer component does it; the head's plan ------------------------
    def encode(self, docs: Sequence[Doc]) -> EncodedBatch:
        """Tokenize `docs` as the transformer does, and fix the head's plan from the docs themselves."""
        batch = encode(self.transformer, docs, self.device)

        def hidden_states() -> torch.Tensor:
            with self.frozen(), torch.no_grad():
                rows = batch.row_index(range(len(batch.docs)))
                return self.run.run(batch, rows, batch.input_ids, None, None)[1]

        batch.plan = self.head.plan(batch, hidden_states)
        return batch

    def targets(self, batch: EncodedBatch, output: ViewOutput, labels: LabelsSetting) -> List[List[Target]]:
        """Each doc's targets under the `labels` setting, from a forward pass over the docs themselves."""
        return self.head.targets(batch, output.logits, labels)

    # -- the function --------------------------------------------------------------------------------
    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Eval mode, parameters out of autograd, head dropout off, listener grad_factor 1; restored on exit."""
        with guards.frozen(self.hf_model, self.head.model):
            yield

    @contextmanager
    def autocast(self) -> Iterator[None]:
        with self.run.autocast():
            yield

    @contextmanager
    def precision(self, dtype: str) -> Iterator[None]:
        """Run the transformer in `dtype` (``float32`` or ``bfloat16``) inside the block, whatever the view's
        own dtype: a bfloat16 method computes the values its certificate is measured against in float32."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
        check_autocast(self.device, DTYPES[dtype])
        own = self.run.dtype
        for run in self._runs.values():  # the view's own site and every other site it has run at
            run.dtype = DTYPES[dtype]
        try:
            yield
        finally:
            for run in self._runs.values():  # sites first run inside the block included
                run.dtype = own

    @property
    def reduced_precision(self) -> bool:
        """Whether the transformer runs under autocast to a dtype narrower than float32."""
        return self.run.dtype != torch.float32

    @contextmanager
    def capturing_attention(self, reduce: Optional[attention.Reduce] = None) -> Iterator[attention.CapturedAttention]:
        """The attention probabilities of the forward passes run inside the context (see
        `spacy_attrib.view.attention`): ``captured.values(batch.width)`` after ``view.forward(batch)`` holds,
        per row of the pass, every layer's masked attention (rows, layers, heads, T, T), or what `reduce`
        keeps of each call's attention. The model runs as before outside the context."""
        with attention.capturing(self.hf_model, reduce) as captured:
            yield captured

    @contextmanager
    def detached_nonlinearities(self, parts: Sequence[str] = internals.PARTS) -> Iterator[None]:
        """Inside the block the transformer's backward pass treats `parts` (``attention`` probabilities,
        ``layer_norm`` standard deviations, the feed-forward ``activation``) as constants, forward values
        unchanged: see `spacy_attrib.view.internals`. Hooks are removed on exit."""
        with internals.detached_nonlinearities(self.hf_model, parts):
            yield

    def capture(self, batch: EncodedBatch, input_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The tensor at the attribution site for `input_ids` (default: the batch's own), without grad."""
        ids = batch.input_ids if input_ids is None else input_ids
        with self.frozen():
            return self.run.capture(self.run.inputs(batch, ids, None))

    def capture_at(self, batch: EncodedBatch, site: AttributionSite) -> torch.Tensor:
        """The tensor at another `site` than the view's (e.g. a layer's input, ``site = k − 1`` for a view
        at layer ``k``) for the batch's own ids, without grad."""
        run = self.run_at(site)
        with self.frozen():
            return run.capture(run.inputs(batch, batch.input_ids, None))

    def states(self, batch: EncodedBatch) -> List[torch.Tensor]:
        """Every state of the transformer for the batch's own rows, from one forward pass, without grad:
        the word embeddings, the input of each encoder layer (the embedding output first) and the last
        layer's output, L + 2 tensors (rows, T, hidden); state ``i`` is at the site `state_site(i)`. These are
        DiffMask's ``hidden_states`` (its `bert_getter`)."""
        word_embeddings: List[torch.Tensor] = []
        handle = self.hf_model.get_input_embeddings().register_forward_hook(
            lambda module, args, output: word_embeddings.append(output.detach()))
        try:
            with self.frozen(), torch.no_grad(), self.autocast():
                hidden = self.hf_model(**self.run.inputs(batch, batch.input_ids, None),
                                       output_hidden_states=True).hidden_states
        finally:
            handle.remove()
        return [state.float() for state in [word_embeddings[0], *hidden]]

    def run_at(self, site: AttributionSite) -> TransformerRun:
        """How the transformer runs with `site` as its attribution site (made once per site)."""
        if site not in self._runs:
            self._runs[site] = TransformerRun(self.hf_model, site, self.run.dtype, self.run.padding_side)
        return self._runs[site]

    def forward(self, batch: EncodedBatch, inputs: Optional[torch.Tensor] = None, *,
                doc_index: Optional[Sequence[int]] = None, input_ids: Optional[torch.Tensor] = None,
                max_rows: Optional[int] = None, site: Optional[AttributionSite] = None) -> ViewOutput:
        """The attributed output for instances of the batch's docs, differentiable w.r.t. the inputs.

        inputs: values at the attribution site for every instance row (shape (n_rows, T, hidden)); by
            default the real ones, captured as a leaf that requires grad when grad mode is on.
        doc_index: which doc each instance copies (default: each doc once, in order); instance rows are
            the doc's rows, concatenated in instance order (see `EncodedBatch.row_index`).
        input_ids: wordpiece ids for the instance rows, for perturbed inputs (default: the docs' own).
        max_rows: run the transformer at most this many rows at a time. Past it, rows run in chunks under
            activation checkpointing: the backward pass recomputes one chunk at a time (rows are
            independent, so this is exact), which bounds memory whatever the length of a doc.
        site: where `inputs` go, when not at the view's own attribution site (e.g. ``state_site(i)`` for
            a masked state of `states`).
        The pass runs inside `frozen()` (nested in the caller's own, it changes nothing): what that sets
        (eval mode, no dropout, grad_factor 1) is read during the forward pass, so a backward pass after it
        sees the same function.
        """
        doc_index = list(range(len(batch.docs))) if doc_index is None else list(doc_index)
        rows = batch.row_index(doc_index)
        ids = batch.input_ids[rows] if input_ids is None else input_ids
        run = self.run if site is None else self.run_at(site)
        with self.frozen():
            inputs, hidden = run.run(batch, rows, ids, inputs, max_rows)
            logits = HeadFunction.apply(hidden, self.head, batch, doc_index)
        return ViewOutput(self.head.scores(logits, batch, doc_index, self.output), logits, inputs, doc_index)

    def layer_means(self, batch: EncodedBatch) -> torch.Tensor:
        """Each doc's mean activation at the embedding output and after every encoder layer, over its real
        wordpieces (all rows), shape (docs, layers + 1): what Atanasova et al.'s consistency tests compare."""
        states = self.states(batch)[1:]  # without the word embeddings
        mask = batch.attention_mask.unsqueeze(-1).float()
        means = torch.zeros((len(batch.docs), len(states)), device=self.device)
        for d, (start, n) in enumerate(zip(batch.row_starts, batch.rows)):
            if n:
                weight = mask[start:start + n]
                for layer, state in enumerate(states):
                    means[d, layer] = (state[start:start + n] * weight).sum() / (weight.sum() * state.shape[-1])
        return means


# -- where things are in the pipeline --------------------------------------------------------------
# Components are looked up among all of the pipeline's, disabled ones included: `spacy train` disables its
# frozen components while it initializes the others (spacy/training/initialize.py), and a trained attribution
# component (DiffMask) builds its probe from the frozen transformer then. The view runs the Hugging Face
# module and the head's model itself, so a disabled component serves as well as an enabled one.
def find_transformer(nlp: Language) -> Tuple[str, Transformer]:
    found = [(name, pipe) for name, pipe in nlp.components if isinstance(pipe, Transformer)]
    if not found:
        raise ValueError(
            "The pipeline has no spacy-transformers 'transformer' component "
            f"(components: {nlp.pipe_names}); attribution methods explain transformer pipelines."
        )
    if len(found) > 1:
        raise ValueError(f"The pipeline has several transformers {[n for n, _ in found]}; not supported")
    return found[0]


def encoder_depth(nlp: Language) -> int:
    """The number of encoder layers of the pipeline's transformer (its weights must be loaded)."""
    return len(encoder_layers(find_transformer(nlp)[1].model.transformer))


def head_kind_of(nlp: Language, name: str) -> Type[Head]:
    """The head kind of the component `name`, with a clear error where there is no such component or its
    kind is not supported."""
    if name not in nlp.component_names:
        raise ValueError(f"No component named {name!r} in the pipeline {nlp.pipe_names}")
    pipe = nlp.get_pipe(name)
    kind = head_kind(pipe)
    if kind is None:
        raise ValueError(f"Component {name!r} ({type(pipe).__name__}) is not a supported head kind; "
                         f"supported: {', '.join(SUPPORTED_HEADS)}")
    return kind


def listeners_of(model: Model, transformer_name: str) -> List[TransformerListener]:
    return [node for node in model.walk() if isinstance(node, TransformerListener)
            and node.upstream_name in ("*", transformer_name)]


def default_head(nlp: Language, transformer_name: str) -> str:
    """The single supported component that listens to the transformer."""
    heads = [name for name, pipe in nlp.components
             if isinstance(getattr(pipe, "model", None), Model) and listeners_of(pipe.model, transformer_name)]
    supported = [name for name in heads if head_kind(nlp.get_pipe(name)) is not None]
    if len(supported) == 1:
        return supported[0]
    if not supported:
        raise ValueError(
            f"No supported head listens to the transformer {transformer_name!r} "
            f"(listening: {heads}; supported kinds: {', '.join(SUPPORTED_HEADS)}). Name one with `head`."
        )
    raise ValueError(f"Several heads listen to the transformer: {supported}. Choose one with `head`.")


__all__ = ["DifferentiableView", "EmbeddingView", "EncodedBatch", "ViewOutput", "SUPPORTED_HEADS", "encoder_depth", "head_kind_of"]
__all__ += ["state_site"]
