"""`TrainableAttributionComponent`: an attribution method with a model of its own that `spacy train` trains
(DiffMask's probe), placed after the transformer and the head it explains.

The method's torch module (its probe) is wrapped in a thinc `PyTorchWrapper`, so that spaCy's optimizer
updates it (`finish_update`) and it is saved with the pipeline. The probe is built in `initialize` from the
trained model it explains (its width, depth, embeddings), so the component saves the probe's shape beside
its weights, and loading builds the probe from that shape before reading the weights.

What it must never do is train the model it explains: its loss runs through the view inside `frozen()`
(the transformer's parameters out of autograd, the head's thinc gradients discarded), so the probe's
gradients stop at the site it masks. The pipeline's own training config freezes the transformer and the
head (``[training] frozen_components``); the probe's model holds no `TransformerListener`, so
spacy-transformers never routes a gradient through it into the transformer.
"""

from typing import Any, Callable, Dict, Iterable, Optional

import torch
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.training import Example
from thinc.api import Model, Optimizer, PyTorchWrapper

from .base import AttributionComponent


class TrainableAttributionComponent(AttributionComponent, TrainablePipe):
    """Base of attribution methods trained with `spacy train`. A subclass implements `make_probe` (the
    torch module, made from the view in `initialize`), `probe_from_shape` (the same from a saved shape),
    `loss` (the training objective on a batch of docs, a torch scalar) and `explain`."""

    state_name = "probe"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.vocab = self.nlp.vocab
        self.model: Optional[Model] = None
        self.shape: Optional[Dict[str, Any]] = None
        self.scorer = None

    # -- the probe ------------------------------------------------------------------------------------
    def make_probe(self) -> "tuple[torch.nn.Module, Dict[str, Any]]":
        """A new probe for the pipeline (its view), and the shape that `probe_from_shape` rebuilds it from."""
        raise NotImplementedError

    def probe_from_shape(self, shape: Dict[str, Any]) -> torch.nn.Module:
        raise NotImplementedError

    def set_probe(self, probe: torch.nn.Module, shape: Dict[str, Any]) -> None:
        self.model = PyTorchWrapper(probe.to(self.view.device))
        self.shape = dict(shape)

    @property
    def probe(self) -> torch.nn.Module:
        """The torch module that the thinc model wraps (what the loss and `explain` run)."""
        if self.model is None:
            raise ValueError(
                f"{self.name} has no probe yet: train it with spacy train (the method is a trainable component; "
                f"see configs/masks/), or call initialize(get_examples) and then update(examples)")
        return self.model.shims[0]._model

    def initialize(self, get_examples: Optional[Callable[[], Iterable[Example]]] = None, *,
                   nlp: Optional[Language] = None) -> None:
        """A new, untrained probe for the pipeline's model (`spacy train` then trains it)."""
        super().initialize(get_examples, nlp=nlp)
        self.set_probe(*self.make_probe())

    # -- training ---------------------------------------------------------------------------------------
    def loss(self, examples: Iterable[Example]) -> Optional[torch.Tensor]:
        """The training objective on the examples' docs (None where they hold nothing to train on)."""
        raise NotImplementedError

    def update(self, examples: Iterable[Example], *, drop: float = 0.0, sgd: Optional[Optimizer] = None,
               losses: Optional[Dict[str, float]] = None) -> Dict[str, float]:
        """One gradient of `loss` into the probe (the explained model runs frozen, without dropout: `drop`
        does not apply to it); with `sgd`, the step too (`finish_update`)."""
        losses = {} if losses is None else losses
        losses.setdefault(self.name, 0.0)
        with self.view.frozen():
            loss = self.loss(examples)
            if loss is not None:
                loss.backward()
                losses[self.name] += float(loss.detach())
        if sgd not in (None, False):
            self.finish_update(sgd)
        return losses

    def finish_update(self, sgd: Optimizer) -> None:
        """spaCy's optimizer steps the probe's parameters; then the method's own updates (`after_step`)."""
        self.model.finish_update(sgd)
        self.after_step()

    def after_step(self) -> None:
        """What a method updates itself after each optimizer step (DiffMask: its Lagrange multipliers)."""

    # -- serialization: the probe's shape and weights, as the base's state ------------------------------
    def fitted_state(self) -> Optional[Dict[str, Any]]:
        if self.model is None:
            return None
        return {"shape": self.shape, "model": self.model.to_bytes()}

    def restore_state(self, state: Optional[Dict[str, Any]]) -> None:
        if state is None:
            self.model, self.shape = None, None
            return
        self.set_probe(self.probe_from_shape(state["shape"]), state["shape"])
        self.model.from_bytes(state["model"])
