"""The interface every head kind implements, and the plumbing they share: feeding the head's
`TransformerListener` with hidden states computed in torch, and handing its gradient back.

A head kind answers four questions:

- `plan(batch, hidden_states)`: what must be fixed from the docs themselves before any perturbed pass
  (the parser's predicted transitions; spancat's suggested spans). Perturbed inputs replay the plan.
- `begin_update(batch, hidden, doc_index)`: the head's own thinc model on hidden states of instance rows:
  its raw scores (logits) as a tensor and a backprop from d logits to d hidden (thinc's own backprop).
- `scores(logits, batch, doc_index, output)`: the attributed output, shaped (instances, positions, labels).
- `targets(batch, output, labels)`: what each doc's explained targets are, and where results go.
"""

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from spacy.tokens import Doc
from spacy_transformers.data_classes import TransformerData
from spacy_transformers.layers.listener import TransformerListener
from thinc.api import Model, torch2xp, xp2torch
from transformers.file_utils import ModelOutput

from ...targets import LabelsSetting, Target, validate_labels
from ..encoding import EncodedBatch
from ..guards import thinc_gradients_discarded

Backprop = Callable[[torch.Tensor], torch.Tensor]


def unannotated_copy(doc: Doc) -> Doc:
    """The doc's tokens and whitespace alone: what a head's own annotation step may run on without
    touching the user's doc (and, for the parser, without entities constraining its moves)."""
    return Doc(doc.vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc])


class Head:
    """A head component of the pipeline, as the view runs it. Subclasses are the head kinds."""

    #: the spaCy factories this kind serves, for messages
    factories: Tuple[str, ...] = ()

    def __init__(self, name: str, pipe: Any, listeners: List[TransformerListener], device: torch.device):
        self.name = name
        self.pipe = pipe
        self.model: Model = pipe.model
        self.listeners = listeners
        self.device = device

    @property
    def labels(self) -> Tuple[str, ...]:
        return tuple(self.pipe.labels)

    def notes(self, reaching: str) -> Dict[str, str]:
        """What a method should say about the parts of the head its perturbations leave alone: `reaching`
        is ``gradient`` (gradient methods) or ``wordpieces`` (methods that replace wordpieces, leaving the
        doc's spaCy tokens in place). See the ensemble textcat."""
        return {}

    def check_labels(self, labels: LabelsSetting) -> None:
        validate_labels(labels, self.labels, self.name)

    def plan(self, batch: EncodedBatch, hidden_states: Callable[[], torch.Tensor]) -> Any:
        """What perturbed passes replay; `hidden_states()` runs the transformer on the clean batch."""
        return None

    def begin_update(self, batch: EncodedBatch, hidden: torch.Tensor, doc_index: List[int]
                     ) -> Tuple[torch.Tensor, Backprop]:
        raise NotImplementedError

    def scores(self, logits: torch.Tensor, batch: EncodedBatch, doc_index: List[int], output: str) -> torch.Tensor:
        raise NotImplementedError

    def targets(self, batch: EncodedBatch, logits: torch.Tensor, labels: LabelsSetting) -> List[List[Target]]:
        """Each doc's targets, from the head's logits on the docs themselves (one instance per doc)."""
        raise NotImplementedError

    def position(self, plan: Any, d: int, token: Optional[int], span: Optional[Tuple[int, int]], label: str
                 ) -> Optional[int]:
        """The index along the position axis of `scores` of the target anchored at `token` or `span` in doc
        `d` of the batch whose plan is `plan`; None where the plan has no such target (a span the suggester
        did not propose, an entity the predicted path does not build). Doc-level heads: 0."""
        return 0

    # -- feeding the listener ------------------------------------------------------------------------
    def listener_outputs(self, batch: EncodedBatch, hidden: torch.Tensor, doc_index: List[int]
                         ) -> Tuple[List[TransformerData], List[int]]:
        """What the transformer would have handed the listener for these instances, and where each
        instance's rows start in `hidden`."""
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
        return outputs, offsets

    @contextmanager
    def listening(self, batch: EncodedBatch, docs: Sequence[Doc], outputs: List[TransformerData],
                  backprop: Optional[Callable] = None) -> Iterator[None]:
        """The listeners hold `outputs` (and `backprop`) for `docs` (the batch's docs, as instances) while
        the head's model runs; thinc gradients its backprop leaves are removed after.

        A listener checks that the docs it is called with are those it received by recounting their token
        orths (`get_batch_id`), on every forward and backward: with the batch's orth sums counted once, the
        same check costs a lookup per doc (measured: 3 % of integrated gradients' time on SST-2 docs)."""
        sums = batch.orth_sums()

        def batch_id(inputs: Sequence[Doc]) -> int:
            return sum(sums[id(doc)] if id(doc) in sums else TransformerListener.get_batch_id([doc]) for doc in inputs)

        with thinc_gradients_discarded(self.model):
            for listener in self.listeners:
                listener.receive(batch_id(docs), outputs, backprop)
                listener.get_batch_id = batch_id  # shadows the classmethod on this instance only
            try:
                yield
            finally:
                for listener in self.listeners:
                    listener.receive(None, None, None)
                    del listener.get_batch_id

    @staticmethod
    def gradient_receiver(d_hidden: torch.Tensor, offsets: List[int], batch: EncodedBatch, doc_index: List[int],
                          docs: Sequence[Doc]) -> Callable[[List[TransformerData]], Sequence[Doc]]:
        """The callback the listener's backprop calls with d(transformer outputs): added into `d_hidden`."""
        # trfs2arrays skips docs without wordpieces, hence the doc-order bookkeeping.
        live = [j for j, i in enumerate(doc_index) if batch.rows[i] > 0]

        def receive(d_trf_datas: List[TransformerData]) -> Sequence[Doc]:
            if len(d_trf_datas) != len(doc_index):
                expanded = [TransformerData.empty() for _ in doc_index]
                for j, d_data in zip(live, d_trf_datas):
                    expanded[j] = d_data
                d_trf_datas = expanded
            for j, d_data in enumerate(d_trf_datas):
                if "last_hidden_state" in d_data.model_output:
                    d_state = xp2torch(d_data.model_output.last_hidden_state)
                    d_hidden[offsets[j]:offsets[j] + d_state.shape[0]] += d_state.to(d_hidden)
            return docs

        return receive


class ThincHead(Head):
    """A head whose thinc model maps docs (or docs and spans) to label scores through an output layer
    (Softmax, or Logistic): the layer is bypassed so that the view gets logits, and the attributed
    output is computed from them in torch (log-softmax / log-sigmoid). thinc's Softmax backprop assumes a
    cross-entropy loss and so cannot differentiate an arbitrary function of the probabilities."""

    def __init__(self, name: str, pipe: Any, listeners: List[TransformerListener], device: torch.device):
        super().__init__(name, pipe, listeners, device)
        self.output_layer = final_layer(self.model)
        if is_softmax(self.output_layer):
            self.exclusive = True
        elif is_sigmoid(self.output_layer):
            self.exclusive = False
        else:
            raise ValueError(f"The model of {name!r} does not end in a Softmax or Logistic output layer (its last "
                             f"layer is {self.output_layer.name!r}): cannot tell which output to explain")

    def model_input(self, batch: EncodedBatch, docs: List[Doc], doc_index: List[int]) -> Any:
        return docs

    def to_logits(self, raw: Any, batch: EncodedBatch, docs: List[Doc], doc_index: List[int]) -> torch.Tensor:
        """The model's output as a (instances, positions, labels) tensor."""
        raise NotImplementedError

    def to_d_raw(self, d_logits: torch.Tensor, batch: EncodedBatch, docs: List[Doc], doc_index: List[int]) -> Any:
        """d logits in the shape of the model's output."""
        raise NotImplementedError

    def begin_update(self, batch: EncodedBatch, hidden: torch.Tensor, doc_index: List[int]
                     ) -> Tuple[torch.Tensor, Backprop]:
        outputs, offsets = self.listener_outputs(batch, hidden, doc_index)
        docs = [batch.docs[i] for i in doc_index]
        with logits_out(self.output_layer), self.listening(batch, docs, outputs):
            raw, backprop_model = self.model.begin_update(self.model_input(batch, docs, doc_index))
        logits = self.to_logits(raw, batch, docs, doc_index)

        def backprop(d_logits: torch.Tensor) -> torch.Tensor:
            d_hidden = torch.zeros_like(hidden)
            receiver = self.gradient_receiver(d_hidden, offsets, batch, doc_index, docs)
            # The listener's backprop is cleared after each call, so it is handed over on every backward.
            with logits_out(self.output_layer), self.listening(batch, docs, outputs, receiver):
                backprop_model(self.to_d_raw(d_logits.detach().contiguous(), batch, docs, doc_index))
            return d_hidden

        return logits, backprop

    def scores(self, logits: torch.Tensor, batch: EncodedBatch, doc_index: List[int], output: str) -> torch.Tensor:
        if output == "logit":
            return logits
        if self.exclusive:
            return torch.log_softmax(logits, -1) if output == "log_prob" else torch.softmax(logits, -1)
        return torch.nn.functional.logsigmoid(logits) if output == "log_prob" else torch.sigmoid(logits)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """What the head's own output layer gives for these logits."""
        return torch.softmax(logits, -1) if self.exclusive else torch.sigmoid(logits)

    def chosen_labels(self, logits: torch.Tensor, labels: LabelsSetting, threshold: float = 0.5) -> List[int]:
        """Label indices to explain at one position (logits over the labels): ``predicted`` is the arg-max
        for exclusive heads and every label whose probability reaches `threshold` otherwise."""
        if labels == "predicted":
            if self.exclusive:
                return [int(logits.argmax())]
            return [int(i) for i in torch.nonzero(torch.sigmoid(logits) >= threshold).flatten()]
        if labels == "all":
            return list(range(len(self.labels)))
        return [self.labels.index(label) for label in labels]


class HeadFunction(torch.autograd.Function):
    """torch view of the head's thinc model: forward runs it, backward runs its thinc backprop."""

    @staticmethod
    def forward(ctx, hidden, head: Head, batch: EncodedBatch, doc_index: List[int]):
        logits, backprop = head.begin_update(batch, hidden, doc_index)
        ctx.backprop = backprop
        return logits

    @staticmethod
    def backward(ctx, d_logits):
        return ctx.backprop(d_logits), None, None, None


# -- the output layer, bypassed for the length of a call --------------------------------------------
def final_layer(model: Model) -> Model:
    """The last layer a model's output goes through (descending into chains and wrappers)."""
    node = model
    while node.layers:
        node = node.layers[-1]
    return node


def is_softmax(node: Model) -> bool:
    return node.name == "softmax" and node.has_param("W")


def is_sigmoid(node: Model) -> bool:
    return node.name in ("logistic", "sigmoid_activation")


def _affine_forward(model: Model, X, is_train: bool):
    """A Softmax layer's affine part: logits instead of probabilities. Its backprop maps d logits to
    d input, which is what thinc's Softmax backprop already does (it assumes a cross-entropy loss)."""
    W, b = model.get_param("W"), model.get_param("b")
    temperature = model.attrs.get("softmax_temperature", 1.0)
    Y = model.ops.affine(X, W, b) / temperature

    def backprop(dY):
        return model.ops.gemm(dY, W) / temperature

    return Y, backprop


def _identity_forward(model: Model, X, is_train: bool):
    return X, lambda dY: dY


@contextmanager
def logits_out(output_layer: Model) -> Iterator[None]:
    """The head's final Softmax becomes affine, its final Logistic the identity. Only that layer: an
    activation inside the model (the bag-of-words branch of an ensemble textcat) is part of the function."""
    func = output_layer._func
    output_layer._func = _affine_forward if is_softmax(output_layer) else _identity_forward
    try:
        yield
    finally:
        output_layer._func = func
