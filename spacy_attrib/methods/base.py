"""The spaCy component every attribution method is built on.

A method subclasses `AttributionComponent` and implements `explain(batch)`: given docs encoded the way the
pipeline's transformer encodes them, return for each doc the wordpiece-level map of each target it
explains. The base does the rest: configuration, choosing targets, batching docs by length, aggregating
wordpieces to spaCy tokens, writing `doc._.attributions`, serialization.
"""

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import numpy
import srsly
import torch
from pydantic import StrictInt
from spacy.language import Language
from spacy.pipeline import Pipe
from spacy.tokens import Doc
from spacy.util import ensure_path, minibatch

from ..align import aggregate
from ..attribution import Attribution, install_extensions, mark_explained, segments_of, set_attribution
from ..pairs import pair_segments
from ..targets import LabelsSetting, Target, resolve_labels, slot_count, slot_values
from ..view import DifferentiableView, EncodedBatch, ViewOutput, head_kind_of
from ..view.guards import register_fork_guard

# Setting types of the factories: spaCy validates them when a component is created (`add_pipe`,
# `spacy.load`, a training config), so a bad value fails there, naming the setting, not on the first doc.
Labels = Union[Literal["predicted", "all", "last"], List[str]]
Output = Literal["log_prob", "prob", "logit"]
Aggregation = Literal["sum", "mean", "max_abs"]
Site = Union[Literal["embeddings", "word_embeddings"], StrictInt]
DType = Literal["float32", "bfloat16"]
ASSIGNS = ["doc._.attributions", "span._.attributions", "token._.attributions"]

DEFAULT_CONFIG: Dict[str, Any] = {
    "head": None,
    "labels": "predicted",
    "output": "log_prob",
    "aggregation": "sum",
    "attribute_at": "embeddings",
    "batch_size": 32,
    "internal_batch_size": 128,
    "dtype": "float32",
    "key": None,
}


@dataclass
class WordpieceMap:
    """A method's raw answer for one target of one doc: a score per position of the doc's rows, or, for
    methods whose features are spaCy tokens (perturbation), a score per token (`token_scores`, `scores`
    None): each wordpiece of a token then carries the token's score, as Captum reports a feature group's
    attribution on every element of the group, and the `aggregation` setting does not apply."""

    target: Target
    scores: Optional[numpy.ndarray]  # (rows, T)
    output: float
    extras: Dict[str, Any] = field(default_factory=dict)
    token_scores: Optional[numpy.ndarray] = None  # (n_tokens,)


class AttributionComponent(Pipe):
    """Base of the ``attr_*`` components. Settings common to all methods:

    head: the name of the head component to explain (default: the single supported head listening to the
        transformer).
    labels: ``"predicted"`` (default), ``"all"``, ``"last"`` (the head's last label: Wu & Ong's target), or a
        list of labels.
    output: the attributed output, ``log_prob`` (default), ``prob`` or ``logit``.
    aggregation: wordpiece → token aggregation, ``sum`` (default), ``mean`` or ``max_abs``.
    attribute_at: ``embeddings`` (embedding layer output, default), ``word_embeddings``, or a layer number.
    batch_size: docs encoded and explained together (grouped by length to limit padding).
    internal_batch_size: transformer rows (windows of docs × integration points or samples) per
        forward/backward; bounds memory, also for a single long doc (see `DifferentiableView.forward`).
    dtype: ``float32`` (default) or ``bfloat16`` (the transformer runs under autocast).
    key: the name under which results appear in ``doc._.attributions`` (default: the method's name).
    """

    method_name = "attribution"
    #: the name under which the state `initialize` fits is saved (a file beside the settings in `to_disk`, a
    #: key in `to_bytes`); None for methods whose settings are their whole state
    state_name: Optional[str] = None
    #: whether the method reads gradients (then it cannot see what no gradient reaches; the head says what)
    uses_gradients = False

    @property
    def fits_state(self) -> bool:
        """Whether `initialize(get_examples)` fits state from examples (statistics, indexes) that depends on
        the trained model, so that `spacy train` must fit it again on the model it saves."""
        return False

    def __init__(self, nlp: Language, name: str, *, head: Optional[str], labels: LabelsSetting,
                 output: str, aggregation: str, attribute_at: Union[str, int], batch_size: int,
                 internal_batch_size: int, dtype: str, key: Optional[str], **settings: Any):
        for setting, value in (("batch_size", batch_size), ("internal_batch_size", internal_batch_size)):
            if value < 1:
                raise ValueError(f"{setting} must be at least 1, got {value}")
        if head is not None:
            # Components are created in pipeline order, so a head is there before what explains it.
            head_kind_of(nlp, head)
        self.nlp = nlp
        self.name = name
        self.cfg: Dict[str, Any] = dict(head=head, labels=labels if isinstance(labels, str) else list(labels),
                                        output=output,
                                        aggregation=aggregation, attribute_at=attribute_at,
                                        batch_size=batch_size, internal_batch_size=internal_batch_size,
                                        dtype=dtype, key=key, **settings)
        self._view: Optional[DifferentiableView] = None
        install_extensions()
        # Before nlp.pipe(n_process=…) forks: the children build the view, too late to guard themselves.
        register_fork_guard()

    @property
    def key(self) -> str:
        return self.cfg["key"] or self.method_name

    @property
    def view(self) -> DifferentiableView:
        """The pipeline as a differentiable function, built on first use (the head may be added later)."""
        if self._view is None:
            view = DifferentiableView(self.nlp, self.cfg["head"], output=self.cfg["output"],
                                      attribute_at=self.attribution_site(), dtype=self.cfg["dtype"])
            if not view.labels:
                raise ValueError(f"The head {view.head_name!r} has no labels: initialize or train it first")
            view.head.check_labels(self.cfg["labels"])
            self._view = view
        return self._view

    def attribution_site(self) -> Union[str, int]:
        """The view's attribution site: the `attribute_at` setting (a method may derive it from the model)."""
        return self.cfg["attribute_at"]

    def update_settings(self, settings: Dict[str, Any]) -> None:
        """Change settings of a component already made (e.g. loaded, whose saved settings `from_disk`
        restored), as a command line applies its overrides; the view is rebuilt (and the labels checked
        against the head) on next use."""
        unknown = sorted(set(settings) - set(self.cfg))
        if unknown:
            raise ValueError(f"{self.name} has no setting(s) {unknown}; its settings are {sorted(self.cfg)}")
        self.cfg.update({k: list(v) if isinstance(v, (list, tuple)) else v for k, v in settings.items()})
        self.settings_changed()

    def settings_changed(self) -> None:
        """What follows from the settings is rebuilt on next use (after `update_settings` and loading)."""
        self._view = None

    def fitted_state(self) -> Optional[Dict[str, Any]]:
        """The state `initialize` fitted, as plain data for `state_name` (None: not fitted)."""
        return None

    def restore_state(self, state: Optional[Dict[str, Any]]) -> None:
        """Set the state from what `fitted_state` returned (None: not fitted)."""

    def initialize(self, get_examples: Optional[Callable] = None, *, nlp: Optional[Language] = None) -> None:
        """Check that the pipeline has what the method needs; methods with state also fit it here."""
        self._view = None
        self.view

    # -- running ------------------------------------------------------------------------------------
    def __call__(self, doc: Doc) -> Doc:
        self.set_annotations([doc], self.predict([doc]))
        return doc

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        for docs in minibatch(stream, batch_size):
            self.set_annotations(docs, self.predict(docs))
            yield from docs

    def predict(self, docs: Sequence[Doc]) -> List[List[Attribution]]:
        """Explain `docs`: per doc, one `Attribution` per target (none for docs without tokens)."""
        docs = list(docs)
        results: List[List[Attribution]] = [[] for _ in docs]
        order = sorted((i for i, doc in enumerate(docs) if len(doc)), key=lambda i: len(docs[i]))
        for group in minibatch(order, self.cfg["batch_size"]):
            batch = self.view.encode([docs[i] for i in group])
            for i, maps in zip(group, self.explain(batch)):
                results[i] = self._to_attributions(batch, group.index(i), maps)
        return results

    def set_annotations(self, docs: Sequence[Doc], results: Sequence[List[Attribution]]) -> None:
        for doc, attributions in zip(docs, results):
            mark_explained(doc, self.key)
            for attribution in attributions:
                set_attribution(doc, attribution)

    def explain(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        """The method's algorithm: for each doc of the batch, a wordpiece map per explained target."""
        raise NotImplementedError

    # -- helpers for methods ------------------------------------------------------------------------
    def targets(self, output: ViewOutput, batch: EncodedBatch) -> List[List[Target]]:
        """The targets of each doc, read from a forward pass over the docs themselves."""
        return self.view.targets(batch, output, resolve_labels(self.cfg["labels"], self.view.labels))

    def maps(self, batch: EncodedBatch, targets: List[List[Target]], output: ViewOutput,
             per_slot: Sequence[torch.Tensor], extras: Optional[Callable[[int, Target], Dict]] = None
             ) -> List[List[WordpieceMap]]:
        """Package per-slot wordpiece scores (each (n_rows, T), rows of the docs in order) by doc."""
        notes = self.view.head.notes("gradient") if self.uses_gradients else {}
        result: List[List[WordpieceMap]] = [[] for _ in batch.docs]
        for d, doc_targets in enumerate(targets):
            start, n = batch.row_starts[d], batch.rows[d]
            for slot, target in enumerate(doc_targets):
                scores = per_slot[slot][start:start + n].detach().float().cpu().numpy()
                value = float(output.scores[d, target.position, target.label_index].detach())
                result[d].append(WordpieceMap(target, scores, value, {**notes, **(extras(d, target) if extras else {})}))
        return result

    def _to_attributions(self, batch: EncodedBatch, d: int, maps: List[WordpieceMap]) -> List[Attribution]:
        layout = batch.layout(d)
        doc = batch.docs[d]
        segments = [(name, start, end, [t.text for t in doc[start:end]]) for name, start, end in pair_segments(doc)]
        attributions = []
        for m in maps:
            if m.token_scores is None:
                wordpiece_scores = m.scores.reshape(-1)[layout.positions].astype("float32")
                scores = aggregate(wordpiece_scores, layout.alignment, self.cfg["aggregation"])
            else:
                scores = numpy.asarray(m.token_scores, dtype="float32")
                wordpiece_scores = numpy.zeros(len(layout.positions), dtype="float32")
                for token, pieces in enumerate(layout.alignment):
                    wordpiece_scores[pieces] = scores[token]
            attributions.append(Attribution(
                method=self.key, label=m.target.label, token=m.target.token, span=m.target.span,
                scores=scores, wordpieces=layout.strings, wordpiece_scores=wordpiece_scores,
                alignment=layout.alignment, output=m.output, extras=m.extras,
                segments=segments_of(scores, segments)))
        return attributions

    # -- serialization: the settings, and the fitted state of methods that have one -------------------
    def to_bytes(self, *, exclude: Tuple = tuple()) -> bytes:
        data: Dict[str, Any] = {"cfg": self.cfg}
        if self.state_name is not None:
            data[self.state_name] = self.fitted_state()
        return srsly.msgpack_dumps(data)

    def from_bytes(self, bytes_data: bytes, *, exclude: Tuple = tuple()) -> "AttributionComponent":
        data = srsly.msgpack_loads(bytes_data)
        self.cfg.update(data["cfg"])
        self.settings_changed()
        if self.state_name is not None:
            self.restore_state(data[self.state_name])
        return self

    def to_disk(self, path: Union[str, Path], *, exclude: Tuple = tuple()) -> None:
        path = ensure_path(path)
        path.mkdir(parents=True, exist_ok=True)
        srsly.write_json(path / "cfg", self.cfg)
        state = self.fitted_state() if self.state_name is not None else None
        if state is not None:
            srsly.write_msgpack(path / self.state_name, state)

    def from_disk(self, path: Union[str, Path], *, exclude: Tuple = tuple()) -> "AttributionComponent":
        path = ensure_path(path)
        if (path / "cfg").exists():
            self.cfg.update(srsly.read_json(path / "cfg"))
        self.settings_changed()
        if self.state_name is not None:
            state = path / self.state_name
            self.restore_state(srsly.read_msgpack(state) if state.exists() else None)
        return self


def doc_seed(seed: int, doc: Doc) -> int:
    """A seed for a doc's random draws from the `seed` setting and the doc's text, nothing else, so results
    do not depend on how docs are batched."""
    return seed + zlib.crc32(doc.text.encode("utf8"))


def doc_noise(batch: EncodedBatch, d: int, hidden: int, generator: torch.Generator, std: float = 1.0) -> torch.Tensor:
    """The next sample of N(0, std²) noise for doc `d`'s rows, (rows, T, hidden), from the doc's own generator.

    It is drawn at the doc's own width and zero-padded to the batch's, so that it does not depend on the other
    docs of the batch (padding positions are masked out of attention anyway)."""
    start, n = batch.row_starts[d], batch.rows[d]
    width = int(batch.attention_mask[start:start + n].sum(1).max())
    scale = torch.full((n, width, hidden), std, device=batch.input_ids.device)
    return torch.nn.functional.pad(torch.normal(0.0, scale, generator=generator), (0, 0, 0, batch.width - width))


def check_choice(setting: str, value: Any, choices: Sequence[Any]) -> None:
    """A clear error for a setting outside its choices."""
    if value not in choices:
        raise ValueError(f"{setting} must be one of {tuple(choices)}, got {value!r}")


def slot_gradients(output: ViewOutput, targets: List[List[Target]]) -> Iterator[Tuple[int, torch.Tensor]]:
    """d (slot's target value) / d inputs for each target slot, one backward pass per slot."""
    n_slots = slot_count(targets)
    for slot in range(n_slots):
        seed = slot_values(output.scores, output.doc_index, targets, slot).sum()
        (grad,) = torch.autograd.grad(seed, output.inputs, retain_graph=slot < n_slots - 1)
        yield slot, grad


@dataclass
class InstanceChunk:
    """Instances processed in one forward/backward. An instance is a copy of one doc of the batch (at
    one integration point, one noise sample, …); `instances` index the caller's list of instances."""

    instances: List[int]
    doc_index: List[int]
    rows: torch.Tensor  # the batch row each instance row copies
    row_instance: torch.Tensor  # the caller's index of the instance each row belongs to
    offsets: List[int]  # where each instance's rows start in the chunk

    def split(self, values: torch.Tensor, batch: EncodedBatch) -> List[torch.Tensor]:
        """Per-instance slices of a tensor over the chunk's rows."""
        return [values[start:start + batch.rows[d]] for start, d in zip(self.offsets, self.doc_index)]


def instance_chunks(batch: EncodedBatch, instance_docs: Sequence[int], max_rows: int) -> Iterator[InstanceChunk]:
    """Split instances (given by the doc each one copies) into chunks of at most `max_rows` transformer
    rows; an instance larger than that forms a chunk of its own. Docs without rows are skipped."""
    device = batch.input_ids.device
    chunk: List[int] = []
    n_rows = 0

    def make() -> InstanceChunk:
        doc_index = [instance_docs[i] for i in chunk]
        row_instance = [i for i in chunk for _ in range(batch.rows[instance_docs[i]])]
        offsets = numpy.concatenate([[0], numpy.cumsum([batch.rows[d] for d in doc_index])[:-1]])
        return InstanceChunk(list(chunk), doc_index, batch.row_index(doc_index),
                             torch.tensor(row_instance, dtype=torch.long, device=device),
                             offsets.astype(int).tolist())

    for i, d in enumerate(instance_docs):
        if batch.rows[d] == 0:
            continue
        if chunk and n_rows + batch.rows[d] > max_rows:
            yield make()
            chunk, n_rows = [], 0
        chunk.append(i)
        n_rows += batch.rows[d]
    if chunk:
        yield make()
