"""`attr_lafa`: Locally Aggregated Feature Attribution (Zhang, Wang, Jiang & Song, NAACL 2022, "Locally
Aggregated Feature Attribution on Natural Language Model Understanding", arXiv 2204.10893).

A gradient attribution of a doc X₀ is smoothed with the attributions of similar docs of the training data:

1. Base attribution (Eqs. 1–3): the squared gradient of the output at the word embeddings h₀ of each
   wordpiece, ``m_t = Σ_j (∂F/∂h_{0,t,j})²`` (``base = "saliency"``, SimpleGrad, default); the square of the
   SmoothGrad mean gradient (``"smoothgrad"``); or the square of the wordpiece's integrated gradient
   ``m_t = IG_t²`` (``"integrated_gradients"``: the IG component returns IG_t summed over hidden units, so
   its square stands in for the paper's element-wise square-sum). The base is the project's own component
   (`attr_saliency` with ``reduction = "l2_squared"``, `attr_smoothgrad` over saliency, or
   `attr_integrated_gradients`), made with ``nlp.create_pipe`` from this component's settings and
   ``base_config``; LAFA calls its `explain` on the same encoded batch, so both share one view.
2. Neighbours (Eq. 4): every doc is encoded by the explained model itself: the mean of the hidden states
   after encoder layer `layer` over the doc's real wordpieces (all its windows). The training docs are
   indexed in `initialize`; the neighbours of X₀ for a target of label L are the reference docs X_i with
   ``‖H(X_i) − H(X₀)‖₂ < ε`` that have a base attribution for L (a doc-level head: every doc; ner, spancat,
   tagger: the docs with a predicted entity / span / token of label L, their maps averaged), restricted to
   the docs whose prediction includes L where ``same_label``, the `max_neighbours` nearest (ties by index).
   ε is the `cutoff_quantile` quantile of the pairwise distances among (the first `EPSILON_SAMPLE` of) the
   reference docs; ``cutoff_quantile = 1`` disables the cut-off. A training doc explained is its own
   nearest neighbour.
3. Aggregation (Eqs. 6–7), at each wordpiece position t of X₀ (real or structural, [CLS]/[SEP] included):

       M_LAFA(X₀)_t = m(X₀)_t + λ · E(w_t),
       E(w_t) = (1 / |X_sim|) Σ_{i ∈ X_sim} Σ_{k=1..T_i} m_{i,k} · κ(e(w_t), e(w_{i,k})) / T_i

   with m_{i,k} the base attribution of neighbour i's k-th real wordpiece for the same label, T_i its
   number of real wordpieces, e(·) the model's input word embedding (context-free, so a piece of X₀ draws on
   the neighbours' identical or similar pieces) and κ the `kernel`: ``cosine`` (default), ``rbf``
   exp(−‖a−b‖²/(2l²)), ``laplacian`` exp(−‖a−b‖/l) (l = `length_scale`, the paper's 2), ``polynomial``
   (7 a·b)³ (the paper's cubic kernel), ``inverse_l2`` 1/‖a−b‖ clipped to [0.3, 3], ``indicator`` 1[w = w′]
   (same wordpiece id). With no neighbour, or λ = 0, the result is the base's, bit for bit.

The reference docs' pooled encodings, wordpiece ids and base attributions are computed once in
`initialize(get_examples)` (batched, with a progress bar) and saved with the pipeline; search is exact
(numpy), which on this project's scale (≤ 100k docs) needs no index library.
"""

from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import numpy
import torch
from pydantic import StrictInt
from spacy.language import Language
from spacy.tokens import Doc
from spacy.util import minibatch
from tqdm import tqdm

from ..view import DifferentiableView, EncodedBatch, encoder_depth
from ..view.heads.classifier import ClassifierHead
from .base import (ASSIGNS, DEFAULT_CONFIG, Aggregation, AttributionComponent, DType, Labels, Output, Site,
                   WordpieceMap, check_choice)

BASES = {"saliency": "attr_saliency", "smoothgrad": "attr_smoothgrad",
         "integrated_gradients": "attr_integrated_gradients"}
KERNELS = ("cosine", "rbf", "laplacian", "polynomial", "inverse_l2", "indicator")
Base = Literal["saliency", "smoothgrad", "integrated_gradients"]
Kernel = Literal["cosine", "rbf", "laplacian", "polynomial", "inverse_l2", "indicator"]
Layer = Union[Literal["auto"], StrictInt]
EPSILON_SAMPLE = 2000  # reference docs whose pairwise distances give ε (2M pairs)
POLYNOMIAL = (7.0, 0.0, 3)  # γ, c₀, degree of the paper's cubic kernel (App. E)
INVERSE_L2_CLIP = (0.3, 3.0)


def default_layer(n_layers: int) -> int:
    """The paper's layers scaled to the model's depth: 5 of BERT-base's 12, 2 of DistilBERT's 6
    (⌊5 n / 12⌋, at least 1)."""
    return max(1, 5 * n_layers // 12)


def kernel_matrix(kernel: str, a: torch.Tensor, b: torch.Tensor, a_ids: torch.Tensor, b_ids: torch.Tensor,
                  length_scale: float) -> torch.Tensor:
    """κ between the embeddings `a` (n, H) and `b` (m, H) of wordpieces `a_ids`, `b_ids`: (n, m)."""
    if kernel == "indicator":
        return (a_ids[:, None] == b_ids[None, :]).to(a.dtype)
    if kernel == "cosine":
        return torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T
    if kernel == "polynomial":
        gamma, c0, degree = POLYNOMIAL
        return (gamma * (a @ b.T) + c0) ** degree
    distance = torch.cdist(a, b)
    if kernel == "rbf":
        return torch.exp(-distance ** 2 / (2 * length_scale ** 2))
    if kernel == "laplacian":
        return torch.exp(-distance / length_scale)
    return (1.0 / distance.clamp_min(1e-12)).clamp(*INVERSE_L2_CLIP)


def l2_distances(a: numpy.ndarray, b: numpy.ndarray) -> numpy.ndarray:
    """‖a_i − b_j‖₂ for rows of `a` (n, H) and `b` (m, H), without an (n, m, H) array: the squared norms in
    float64, the products in the inputs' float32 (a float64 copy of a 100k-doc index costs more than the
    search). Both are centred on `b`'s mean first (distances do not change), which keeps the float32
    products' cancellation error small where all encodings share a large common part."""
    centre = b.mean(0, dtype="float64").astype(b.dtype)
    a, b = a - centre, b - centre
    squared = ((a.astype("float64") ** 2).sum(1)[:, None] + (b.astype("float64") ** 2).sum(1)[None, :]
               - 2 * (a @ b.T).astype("float64"))
    return numpy.sqrt(numpy.maximum(squared, 0.0))


@dataclass
class ReferenceIndex:
    """The reference docs (the training docs) as LAFA searches and aggregates them.

    layer: the encoder layer the encodings were pooled at.
    epsilon: the distance cut-off ε (inf: none).
    encodings: (docs, hidden) mean hidden states at `layer`, float32.
    piece_ids: per doc, the ids of its real wordpieces (all windows, row-major).
    maps: per doc, label → the base attribution of each real wordpiece (mean over the doc's targets of
        that label).
    predicted: per doc, the labels the head predicts for it (what ``same_label`` compares).
    """

    layer: int
    epsilon: float
    encodings: numpy.ndarray
    piece_ids: List[numpy.ndarray]
    maps: List[Dict[str, numpy.ndarray]]
    predicted: List[List[str]]
    _eligible: Dict[Tuple[str, bool], numpy.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.piece_ids)

    def neighbours(self, distances: numpy.ndarray, label: str, same_label: bool, max_neighbours: int) -> List[int]:
        """The reference docs within ε of a doc (its `distances` to them) with a map for `label`, nearest
        first (ties by index), at most `max_neighbours`."""
        candidates = numpy.flatnonzero(self.eligible(label, same_label) & (distances < self.epsilon))
        # A stable sort of the candidates (in index order) by distance: ties keep the lower index first.
        nearest = candidates[numpy.argsort(distances[candidates], kind="stable")[:max_neighbours]]
        return [int(i) for i in nearest]

    def eligible(self, label: str, same_label: bool) -> numpy.ndarray:
        """Which reference docs may be neighbours of a target of `label`, (docs,) bool; kept per label."""
        if (label, same_label) not in self._eligible:
            self._eligible[label, same_label] = numpy.array(
                [label in maps and (not same_label or label in predicted)
                 for maps, predicted in zip(self.maps, self.predicted)], dtype=bool)
        return self._eligible[label, same_label]

    def to_dict(self) -> Dict[str, Any]:
        return {"layer": self.layer, "epsilon": self.epsilon, "encodings": self.encodings,
                "piece_ids": self.piece_ids, "maps": self.maps, "predicted": self.predicted}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ReferenceIndex":
        return cls(int(data["layer"]), float(data["epsilon"]), numpy.asarray(data["encodings"], dtype="float32"),
                   [numpy.asarray(ids, dtype="int64") for ids in data["piece_ids"]],
                   [{label: numpy.asarray(values, dtype="float32") for label, values in maps.items()}
                    for maps in data["maps"]],
                   [list(labels) for labels in data["predicted"]])


def cutoff(encodings: numpy.ndarray, quantile: float) -> float:
    """ε: the `quantile` of the pairwise distances among the first `EPSILON_SAMPLE` encodings (inf for
    ``quantile = 1`` or fewer than two docs)."""
    sample = encodings[:EPSILON_SAMPLE]
    if quantile >= 1 or len(sample) < 2:
        return float("inf")
    distances = l2_distances(sample, sample)[numpy.triu_indices(len(sample), k=1)]
    return float(numpy.quantile(distances, quantile))


class LocallyAggregatedAttribution(AttributionComponent):
    method_name = "lafa"
    uses_gradients = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.index: Optional[ReferenceIndex] = None
        self.base = self._make_base()

    def _make_base(self) -> AttributionComponent:
        """The base method's component, with this component's common settings."""
        cfg = self.cfg
        common = {k: cfg[k] for k in DEFAULT_CONFIG if k != "key"}
        forced = {"saliency": {"reduction": "l2_squared"},
                  "smoothgrad": {"base": "saliency", "reduction": "l2_squared"},
                  "integrated_gradients": {}}[cfg["base"]]
        clash = sorted(set(cfg["base_config"]) & (set(DEFAULT_CONFIG) | set(forced)))
        if clash:
            raise ValueError(f"base_config may not set {clash}: LAFA sets the common settings itself, and its "
                             "base is a squared gradient")
        return self.nlp.create_pipe(BASES[cfg["base"]], name=f"{self.name}_base",
                                    config={**common, **forced, **cfg["base_config"]})

    @property
    def view(self) -> DifferentiableView:
        """The base method's view: LAFA explains the batch the base explains."""
        return self.base.view

    @property
    def fits_state(self) -> bool:
        return True

    @property
    def layer(self) -> int:
        """The encoder layer whose mean hidden state encodes a doc for the neighbour search."""
        n_layers = encoder_depth(self.nlp)
        layer = default_layer(n_layers) if self.cfg["layer"] == "auto" else self.cfg["layer"]
        if not 0 <= layer <= n_layers:
            raise ValueError(f"layer must be 'auto' or in 0..{n_layers} (0: the embedding output), got {layer}")
        return layer

    def settings_changed(self) -> None:
        super().settings_changed()
        self.base = self._make_base()

    # -- the reference index ----------------------------------------------------------------------------
    def initialize(self, get_examples: Optional[Callable] = None, *, nlp: Optional[Language] = None) -> None:
        """Index (at most `max_examples` of) the predicted docs of `get_examples()`: their encodings at
        `layer`, ε, and their base attributions. Call it on the trained pipeline (``spacy train`` does,
        through ``spacy_attrib.enable_attribution.v1``, before each save)."""
        self.base.initialize(nlp=nlp)
        super().initialize(get_examples, nlp=nlp)
        if get_examples is None:
            raise ValueError(f"{self.name}: LAFA indexes the training docs: call initialize(get_examples) with "
                             "the training examples")
        docs = [example.predicted for example in islice(get_examples(), self.cfg["max_examples"])]
        self.index = self.build_index(docs)

    def build_index(self, docs: Sequence[Doc]) -> ReferenceIndex:
        """The reference index of `docs` (those with tokens), batched by `batch_size`."""
        docs = [doc for doc in docs if len(doc)]
        view = self.view
        # Doc-level heads are asked for every label, so that a neighbour of any prediction has a map for
        # the explained label; span and token heads for what they predict (each entity, span, token).
        reference_labels = "all" if isinstance(view.head, ClassifierHead) else "predicted"
        encodings, piece_ids, maps, predicted = [], [], [], []
        with tqdm(total=len(docs), desc=f"{self.name}: indexing", unit="doc") as progress:
            for group in minibatch(docs, self.cfg["batch_size"]):
                batch = view.encode(group)
                encodings.append(self.encode(batch))
                with torch.no_grad(), view.frozen():
                    output = view.forward(batch, max_rows=self.cfg["internal_batch_size"])
                    predicted.extend([sorted({t.label for t in doc_targets})
                                      for doc_targets in view.targets(batch, output, "predicted")])
                with self.base_labels(reference_labels):
                    doc_maps = self.base_maps(batch)
                for d, doc_map in enumerate(doc_maps):
                    real = self.real_positions(batch, d)
                    piece_ids.append(batch.input_ids[batch.row_starts[d]:batch.row_starts[d] + batch.rows[d]]
                                     [real].cpu().numpy().astype("int64"))
                    by_label: Dict[str, List[numpy.ndarray]] = {}
                    for m in doc_map:
                        by_label.setdefault(m.target.label, []).append(m.scores[real.cpu().numpy()])
                    maps.append({label: numpy.mean(values, axis=0).astype("float32")
                                 for label, values in by_label.items()})
                progress.update(len(group))
        encodings_array = numpy.concatenate(encodings) if encodings else numpy.zeros((0, 0), dtype="float32")
        return ReferenceIndex(self.layer, cutoff(encodings_array, self.cfg["cutoff_quantile"]), encodings_array,
                              piece_ids, maps, predicted)

    @contextmanager
    def base_labels(self, labels: str) -> Iterator[None]:
        """The base explains `labels` inside the block."""
        saved = self.base.cfg["labels"]
        self.base.cfg["labels"] = labels
        try:
            yield
        finally:
            self.base.cfg["labels"] = saved

    def encode(self, batch: EncodedBatch) -> numpy.ndarray:
        """H(X) per doc: the mean hidden state after encoder `layer` over the doc's real wordpieces."""
        hidden = self.view.capture_at(batch, self.layer).float()
        mask = batch.attention_mask.unsqueeze(-1).to(hidden.dtype)
        encodings = torch.zeros((len(batch.docs), hidden.shape[-1]))
        for d, (start, n) in enumerate(zip(batch.row_starts, batch.rows)):
            if n:
                encodings[d] = ((hidden[start:start + n] * mask[start:start + n]).sum((0, 1))
                                / mask[start:start + n].sum()).cpu()
        return encodings.numpy()

    @staticmethod
    def real_positions(batch: EncodedBatch, d: int) -> torch.Tensor:
        """Doc `d`'s real (non-padding) positions among its rows, (rows, T) bool."""
        start, n = batch.row_starts[d], batch.rows[d]
        return batch.attention_mask[start:start + n].bool()

    def base_maps(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        """The base attribution m of each target: squared gradients (IG: its per-wordpiece value squared)."""
        maps = self.base.explain(batch)
        if self.cfg["base"] == "integrated_gradients":
            for doc_maps in maps:
                for m in doc_maps:
                    m.scores = m.scores ** 2
        return maps

    # -- the method -----------------------------------------------------------------------------------
    def explain(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        index, cfg = self.index, self.cfg
        if index is None:
            raise ValueError(
                f"{self.name} has no reference index yet: build it on the trained pipeline with "
                f"nlp.get_pipe({self.name!r}).initialize(get_examples) (spacy train does so when its "
                "[training.before_to_disk] callback is spacy_attrib.enable_attribution.v1)")
        if index.layer != self.layer:
            raise ValueError(f"{self.name}: the index was built at layer {index.layer}, the setting is layer "
                             f"{self.layer}: initialize the component again")
        maps = self.base_maps(batch)
        distances = l2_distances(self.encode(batch), index.encodings) if len(index) else None
        for d, doc_maps in enumerate(maps):
            for m in doc_maps:
                neighbours = (index.neighbours(distances[d], m.target.label, cfg["same_label"], cfg["max_neighbours"])
                              if distances is not None else [])
                if neighbours and cfg["neighbour_weight"] != 0:
                    m.scores = m.scores + cfg["neighbour_weight"] * self.neighbour_term(batch, d, neighbours,
                                                                                        m.target.label)
                m.extras = {**m.extras, "base": cfg["base"], "neighbours": neighbours}
        return maps

    def neighbour_term(self, batch: EncodedBatch, d: int, neighbours: Sequence[int], label: str) -> numpy.ndarray:
        """E(w_t) at each position of doc `d`'s rows, (rows, T), zero on padding.

        The sum over the neighbours' pieces is taken over distinct wordpiece ids (κ depends on the id
        alone): each id u carries w_u = Σ_{i,k: w_{i,k} = u} m_{i,k} / (T_i |X_sim|), and E(w_t) = Σ_u κ(w_t, u) w_u.
        """
        index = self.index
        ids = numpy.concatenate([index.piece_ids[i] for i in neighbours])
        weights = numpy.concatenate([index.maps[i][label] / (len(index.piece_ids[i]) * len(neighbours))
                                     for i in neighbours]).astype("float64")
        neighbour_ids, inverse = numpy.unique(ids, return_inverse=True)
        neighbour_weights = numpy.bincount(inverse.reshape(-1), weights=weights, minlength=len(neighbour_ids))
        start, n = batch.row_starts[d], batch.rows[d]
        doc_ids, doc_inverse = torch.unique(batch.input_ids[start:start + n], return_inverse=True)
        device = batch.input_ids.device
        neighbour_ids_t = torch.as_tensor(neighbour_ids, device=device)
        embedding = self.view.hf_model.get_input_embeddings()
        with torch.no_grad():
            kernel = kernel_matrix(self.cfg["kernel"], embedding(doc_ids).double(),
                                   embedding(neighbour_ids_t).double(), doc_ids, neighbour_ids_t,
                                   self.cfg["length_scale"])
            per_id = kernel @ torch.as_tensor(neighbour_weights, device=device)
        values = per_id[doc_inverse] * self.real_positions(batch, d)
        return values.float().cpu().numpy()

    # -- serialization: the reference index beside the settings --------------------------------------
    state_name = "index"

    def fitted_state(self) -> Optional[Dict[str, Any]]:
        return self.index.to_dict() if self.index is not None else None

    def restore_state(self, state: Optional[Dict[str, Any]]) -> None:
        self.index = ReferenceIndex.from_dict(state) if state is not None else None


LAFA_CONFIG: Dict[str, Any] = {**DEFAULT_CONFIG, "attribute_at": "word_embeddings", "base": "saliency",
                               "base_config": {}, "layer": "auto", "max_neighbours": 10, "cutoff_quantile": 0.05,
                               "same_label": True, "kernel": "cosine", "length_scale": 2.0,
                               "neighbour_weight": 1.0, "max_examples": 100_000}


@Language.factory("attr_lafa", default_config=LAFA_CONFIG, assigns=ASSIGNS)
def make_lafa(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
              aggregation: Aggregation, attribute_at: Site, batch_size: int, internal_batch_size: int,
              dtype: DType, key: Optional[str], base: Base, base_config: Dict[str, Any], layer: Layer,
              max_neighbours: int, cutoff_quantile: float, same_label: bool, kernel: Kernel,
              length_scale: float, neighbour_weight: float, max_examples: int) -> LocallyAggregatedAttribution:
    """LAFA: the `base` squared-gradient attribution (at the word embeddings by default, as the paper) plus
    `neighbour_weight` (λ) × the kernel-weighted mean base attribution of at most `max_neighbours` training
    docs within the `cutoff_quantile` distance quantile at encoder `layer` (``"auto"``: ⌊5 n / 12⌋), of the
    same predicted label where `same_label`. Needs `initialize(get_examples)` on the trained pipeline."""
    check_choice("base", base, tuple(BASES))
    check_choice("kernel", kernel, KERNELS)
    if not isinstance(layer, int) and layer != "auto":
        raise ValueError(f"layer must be 'auto' or an encoder layer number, got {layer!r}")
    if max_neighbours < 0 or max_examples < 1:
        raise ValueError(f"max_neighbours must be >= 0 and max_examples >= 1, got {max_neighbours}, {max_examples}")
    if not 0 <= cutoff_quantile <= 1:
        raise ValueError(f"cutoff_quantile must be in [0, 1] (1: no cut-off), got {cutoff_quantile}")
    if length_scale <= 0:
        raise ValueError(f"length_scale must be positive, got {length_scale}")
    if neighbour_weight < 0:
        raise ValueError(f"neighbour_weight (λ) must be >= 0: the scores are unsigned squared gradients, got "
                         f"{neighbour_weight}")
    return LocallyAggregatedAttribution(
        nlp, name, head=head, labels=labels, output=output, aggregation=aggregation, attribute_at=attribute_at,
        batch_size=batch_size, internal_batch_size=internal_batch_size, dtype=dtype, key=key, base=base,
        base_config=dict(base_config), layer=layer, max_neighbours=max_neighbours, cutoff_quantile=cutoff_quantile,
        same_label=same_label, kernel=kernel, length_scale=length_scale, neighbour_weight=neighbour_weight,
        max_examples=max_examples)
