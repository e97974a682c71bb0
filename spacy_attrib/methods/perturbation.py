"""Perturbation attribution: what the prediction does when spaCy tokens are removed. No gradient is taken,
so with ``delete`` these methods also see what no gradient reaches (the bag-of-words branch of an ensemble
textcat, which reads spaCy tokens; replacing wordpieces leaves those in place, and results say so in
``extras["not_attributed"]``).

The features are spaCy tokens: removing one removes all its wordpieces (in every window it is in), with
the `removal` strategy of `spacy_attrib.removal` (``mask``, ``unk``, ``pad``, or ``delete``: re-tokenize
the text without it; ``auto``, the default, is ``mask`` where the tokenizer has a mask token, else
``unk``). All perturbed docs are scored by one loop (`Rescorer`) in batches of `internal_batch_size`
transformer rows, never one forward pass per perturbation, and a perturbation is scored once for all the
targets of its doc. Under ``delete`` a target's own token or span is never removed (a tagger's token
cannot be explained by deleting it): its score is 0.

- Occlusion (Zeiler & Fergus 2014; for text, leave-one-out: Li et al. 2016, "Understanding Neural
  Networks through Representation Erasure"): windows of `window` tokens start every `stride` tokens (the
  last one may run past the end, as Captum's `Occlusion` slides them); a token's score is the mean over
  the windows that contain it of f(x) − f(x without the window). `window = 1` is leave-one-out.
- LIME (Ribeiro et al. 2016), Shapley value sampling (Castro et al. 2009; Štrumbelj & Kononenko 2010) and
  KernelSHAP (Lundberg & Lee 2017) are Captum's `Lime`, `ShapleyValueSampling` and `KernelShap` with
  their defaults (LIME: a Lasso with α = 0.01 weighted by an exponential cosine kernel of width 1 over
  Bernoulli(0.5) keep/remove samples), over one binary feature per spaCy token, through a forward function
  that scores the sampled docs by that loop. `n_samples` is Captum's (LIME, KernelSHAP: samples;
  Shapley: permutations, each costing one pass per token). Draws are seeded per doc by `seed` and the
  doc's text (torch's global generator is restored after), so results do not depend on batching. Shapley
  value sampling is efficient by construction: each permutation's marginal contributions add up to
  f(all) − f(none), so the scores sum to it up to float error, whatever `n_samples`.
"""

from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple

import numpy
import torch
from captum.attr import KernelShap, Lime, ShapleyValueSampling
from spacy.language import Language

from ..removal import Removal, Rescorer
from ..targets import Target
from ..view import EncodedBatch, ViewOutput
from .base import (ASSIGNS, DEFAULT_CONFIG, Aggregation, AttributionComponent, DType, Labels, Output, Site,
                   WordpieceMap, doc_seed)

RemovalSetting = Literal["auto", "mask", "unk", "pad", "delete"]
Perturbation = Tuple[int, Sequence[int]]  # (doc of the batch, spaCy tokens removed)


class PerturbationMethod(AttributionComponent):
    """Base of the methods that score docs with spaCy tokens removed: `explain` runs the clean pass (targets,
    f(x)) and hands `token_scores` a way to score removals (`removal_outputs`)."""

    def removal(self) -> str:
        """The removal strategy: the `removal` setting, ``auto`` resolved for the pipeline's tokenizer."""
        if self.cfg["removal"] != "auto":
            return self.cfg["removal"]
        tokenizer = self.view.tokenizer
        return "mask" if tokenizer.mask_token_id is not None else "unk"

    @property
    def rescorer(self) -> Rescorer:
        """The loop that scores perturbed docs, in the component's output and dtype (built with the view)."""
        view = self.view
        if getattr(self, "_rescorer_of", None) is not view:
            self._rescorer = Rescorer(self.nlp, view.head_name, removal=self.removal(), output=self.cfg["output"],
                                      dtype=self.cfg["dtype"], batch_size=self.cfg["batch_size"],
                                      max_rows=self.cfg["internal_batch_size"])
            self._rescorer_of = view
        return self._rescorer

    def explain(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        with torch.no_grad():
            output = self.view.forward(batch, max_rows=self.cfg["internal_batch_size"])
        targets = self.targets(output, batch)
        scores, extras = self.token_scores_with_extras(batch, targets, output)
        return [[WordpieceMap(target, None, float(output.scores[d, target.position, target.label_index]),
                              dict(extras[d]), token_scores=values)
                 for target, values in zip(targets[d], scores[d])] for d in range(len(batch.docs))]

    def token_scores(self, batch: EncodedBatch, targets: List[List[Target]], output: ViewOutput
                     ) -> List[List[numpy.ndarray]]:
        """For each doc, one score per spaCy token for each of its targets."""
        raise NotImplementedError

    def token_scores_with_extras(self, batch: EncodedBatch, targets: List[List[Target]], output: ViewOutput
                                 ) -> Tuple[List[List[numpy.ndarray]], List[Dict[str, Any]]]:
        """`token_scores`, and for each doc what its maps' `extras` record (here the removal strategy, and what
        replacing wordpieces leaves alone); a method that records something of its own per doc (and has no
        `removal`) overrides this instead."""
        removal = self.removal()
        extras = {"removal": removal, **(self.view.head.notes("wordpieces") if removal != "delete" else {})}
        return self.token_scores(batch, targets, output), [dict(extras) for _ in batch.docs]

    def removal_outputs(self, batch: EncodedBatch, targets: List[List[Target]],
                        perturbations: Sequence[Perturbation]) -> List[numpy.ndarray]:
        """For each (doc, removed tokens), the value of each of the doc's targets on the doc without them."""
        keeps_own = self.removal() == "delete"
        requests, bounds = [], []
        for d, removed in perturbations:
            start = len(requests)
            for t in targets[d]:
                own = set(range(*t.span)) if t.span else ({t.token} if t.token is not None else set())
                kept_removed = tuple(i for i in removed if not (keeps_own and i in own))
                requests.append(Removal(d, kept_removed, t.label, t.token, t.span))
            bounds.append((start, len(requests)))
        scores = self.rescorer.score_encoded(batch, requests)
        return [numpy.asarray([s.value for s in scores[a:b]], dtype="float64") for a, b in bounds]


def clean_values(output: ViewOutput, targets: List[List[Target]], d: int) -> numpy.ndarray:
    """f(x): the value of each of doc `d`'s targets on the doc itself."""
    scores = output.scores.float().cpu().numpy()
    return numpy.asarray([scores[d, t.position, t.label_index] for t in targets[d]], dtype="float64")


class Occlusion(PerturbationMethod):
    method_name = "occlusion"

    def token_scores(self, batch: EncodedBatch, targets: List[List[Target]], output: ViewOutput
                     ) -> List[List[numpy.ndarray]]:
        windows = [occlusion_windows(len(doc), self.cfg["window"], self.cfg["stride"]) if targets[d] else []
                   for d, doc in enumerate(batch.docs)]
        perturbations = [(d, tuple(range(a, b))) for d, doc_windows in enumerate(windows) for a, b in doc_windows]
        values = iter(self.removal_outputs(batch, targets, perturbations))
        result = []
        for d, doc in enumerate(batch.docs):
            clean = clean_values(output, targets, d)
            total = numpy.zeros((len(targets[d]), len(doc)))
            count = numpy.zeros(len(doc))
            for a, b in windows[d]:
                total[:, a:b] += (clean - next(values))[:, None]
                count[a:b] += 1
            result.append(list(total / numpy.maximum(count, 1)))
        return result


def occlusion_windows(n_tokens: int, window: int, stride: int) -> List[Tuple[int, int]]:
    """Token ranges [start, end) of the occluded windows: starts 0, stride, … as long as a window starting
    there still needs to (Captum's ⌈(n − window) / stride⌉ + 1 shifts), the last ones cut at the end."""
    if n_tokens == 0:
        return []
    shifts = -(-max(n_tokens - window, 0) // stride) + 1
    return [(k * stride, min(k * stride + window, n_tokens)) for k in range(shifts)]


class CaptumSampling(PerturbationMethod):
    """A Captum perturbation method over one binary feature per spaCy token (1 kept, 0 removed). Sampled
    perturbations are cached per doc, so explaining several targets of a doc scores each sample once."""

    captum_class: Callable[..., Any]

    def token_scores(self, batch: EncodedBatch, targets: List[List[Target]], output: ViewOutput
                     ) -> List[List[numpy.ndarray]]:
        result: List[List[numpy.ndarray]] = []
        deletes = self.removal() == "delete"
        for d, doc in enumerate(batch.docs):
            # A token without wordpieces is a dummy player when removal replaces wordpieces: removing it changes
            # nothing, so its value is 0. Sampled over, it would take an arbitrary share of the regression fit
            # (LIME, KernelSHAP with fewer samples than features); it is left out of the features instead.
            seen = [i for i, pieces in enumerate(batch.layout(d).alignment) if pieces or deletes]
            features = numpy.asarray(seen, dtype=int)
            cache: Dict[bytes, numpy.ndarray] = {}

            def forward(kept_features: torch.Tensor) -> torch.Tensor:
                rows = [row.astype(bool) for row in kept_features.detach().cpu().numpy()]
                missing = list(dict.fromkeys(row.tobytes() for row in rows if row.tobytes() not in cache))
                if missing:
                    kept = {key: numpy.frombuffer(key, dtype=bool) for key in missing}
                    found = self.removal_outputs(batch, targets, [(d, tuple(features[~kept[key]].tolist()))
                                                                  for key in missing])
                    cache.update(zip(missing, found))
                return torch.as_tensor(numpy.stack([cache[row.tobytes()] for row in rows]), dtype=torch.float64)

            method = self.captum_class(forward)
            inputs = torch.ones((1, len(features)), dtype=torch.float64)
            per_eval = max(1, self.cfg["internal_batch_size"] // max(batch.rows[d], 1))
            doc_scores = []
            for slot in range(len(targets[d])):
                scores = numpy.zeros(len(doc), dtype="float64")
                if len(features):
                    # The same draws for every target of the doc: the cache answers all but the first.
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(doc_seed(self.cfg["seed"], doc))
                        attribution = self.attribute(method, forward, inputs, slot, per_eval)
                    scores[features] = attribution[0].numpy()
                doc_scores.append(scores)
            result.append(doc_scores)
        return result

    def attribute(self, method: Any, forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                  slot: int, per_eval: int) -> torch.Tensor:
        return method.attribute(inputs, baselines=torch.zeros_like(inputs), target=slot,
                                n_samples=self.cfg["n_samples"], perturbations_per_eval=per_eval)


class LimeAttribution(CaptumSampling):
    method_name = "lime"
    captum_class = Lime


class ShapleySampling(CaptumSampling):
    method_name = "shapley_sampling"
    captum_class = ShapleyValueSampling


class KernelShapAttribution(CaptumSampling):
    method_name = "kernel_shap"
    captum_class = KernelShap

    def attribute(self, method: Any, forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                  slot: int, per_eval: int) -> torch.Tensor:
        if inputs.shape[1] == 1:
            # Captum's coalition sampler has no coalition size to draw for one feature (its kernel is 0/0);
            # the Shapley value it estimates is then exact: f(x) − f(∅).
            return (forward(inputs) - forward(torch.zeros_like(inputs)))[:, slot:slot + 1]
        return super().attribute(method, forward, inputs, slot, per_eval)


def check_positive(**settings: int) -> None:
    for setting, value in settings.items():
        if value < 1:
            raise ValueError(f"{setting} must be at least 1, got {value}")


@Language.factory("attr_occlusion", default_config={**DEFAULT_CONFIG, "removal": "auto", "window": 1, "stride": 1},
                  assigns=ASSIGNS)
def make_occlusion(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
                   aggregation: Aggregation, attribute_at: Site, batch_size: int, internal_batch_size: int,
                   dtype: DType, key: Optional[str], removal: RemovalSetting, window: int, stride: int) -> Occlusion:
    """Occlusion over spaCy tokens: f(x) − f(x without a window of `window` tokens), averaged over the
    windows (every `stride` tokens) that contain the token; `window = 1` is leave-one-out."""
    check_positive(window=window, stride=stride)
    if stride > window:
        raise ValueError(f"stride ({stride}) must not exceed window ({window}): tokens between windows would "
                         "never be occluded")
    return Occlusion(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                     attribute_at=attribute_at, batch_size=batch_size, internal_batch_size=internal_batch_size,
                     dtype=dtype, key=key, removal=removal, window=window, stride=stride)


def sampling_factory(cls: type, default_samples: int, what: str) -> Callable[..., CaptumSampling]:
    """The factory of a Captum sampling method (LIME, Shapley sampling, KernelSHAP): one signature for
    the three."""

    def make(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
             aggregation: Aggregation, attribute_at: Site, batch_size: int, internal_batch_size: int,
             dtype: DType, key: Optional[str], removal: RemovalSetting, n_samples: int, seed: int) -> CaptumSampling:
        check_positive(n_samples=n_samples)
        return cls(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                   attribute_at=attribute_at, batch_size=batch_size, internal_batch_size=internal_batch_size,
                   dtype=dtype, key=key, removal=removal, n_samples=n_samples, seed=seed)

    make.__doc__ = what
    return Language.factory(f"attr_{cls.method_name}", assigns=ASSIGNS,
                            default_config={**DEFAULT_CONFIG, "removal": "auto", "n_samples": default_samples,
                                            "seed": 0})(make)


make_lime = sampling_factory(LimeAttribution, 100, "LIME (Captum's `Lime`) over spaCy tokens; `n_samples` "
                             "keep/remove samples (100, as the IBA paper's LIME baseline).")
make_shapley_sampling = sampling_factory(ShapleySampling, 25, "Shapley value sampling (Captum's "
                                         "`ShapleyValueSampling`) over spaCy tokens; `n_samples` permutations.")
make_kernel_shap = sampling_factory(KernelShapAttribution, 100, "KernelSHAP (Captum's `KernelShap`) over "
                                    "spaCy tokens; `n_samples` coalitions.")
