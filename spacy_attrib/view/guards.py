"""What attribution changes for the length of a call, and restores after it.

Attribution never changes the model: during `frozen()` the Hugging Face module is in eval mode (no
dropout), its parameters are out of autograd, the head's dropout is zero and every listener's
`grad_factor` is 1; thinc gradients that a head's backprop leaves are removed after each backprop.
"""

import logging
import os
from contextlib import contextmanager
from typing import Iterator

import torch
from thinc.api import Model

_fork_guard_registered = False


def _single_threaded_torch() -> None:
    torch.set_num_threads(1)


def register_fork_guard() -> None:
    """Make children forked from now on (``nlp.pipe(n_process=…)``) use one torch thread.

    A child that uses torch's OpenMP pool, initialised in the parent, hangs (with or without attribution
    components); one thread per child is also what torch's DataLoader workers use. Registered when the
    first attribution component or view is created, not on import: spaCy imports every factory entry
    point on ``spacy.blank()``, and a program that never explains anything must keep its forked workers
    as they were.
    """
    global _fork_guard_registered
    if not _fork_guard_registered:
        os.register_at_fork(after_in_child=_single_threaded_torch)
        _fork_guard_registered = True


@contextmanager
def frozen(hf_model: torch.nn.Module, head_model: Model) -> Iterator[None]:
    """The transformer and the head frozen (`transformer_frozen`, `head_frozen`); all restored."""
    with transformer_frozen(hf_model), head_frozen(head_model):
        yield


@contextmanager
def transformer_frozen(hf_model: torch.nn.Module) -> Iterator[None]:
    """The Hugging Face module in eval mode (no dropout) with its parameters out of autograd."""
    was_training = hf_model.training
    requires_grad = [(p, p.requires_grad) for p in hf_model.parameters()]
    try:
        hf_model.eval()
        for param, _ in requires_grad:
            param.requires_grad_(False)
        yield
    finally:
        hf_model.train(was_training)
        for param, flag in requires_grad:
            param.requires_grad_(flag)


@contextmanager
def head_frozen(head_model: Model) -> Iterator[None]:
    """The head's dropout off and its listeners' `grad_factor` 1.

    `grad_factor` is a training setting of spacy-transformers' listener (its gradient is multiplied by it
    before it reaches the transformer; 0 freezes the transformer for that head): left in place it would
    scale every attribution by it, silently.
    """
    nodes = list(head_model.walk())
    dropout = [(node, node.attrs["dropout_rate"]) for node in nodes if "dropout_rate" in node.attrs]
    grad_factors = [(node, node.attrs["grad_factor"]) for node in nodes if "grad_factor" in node.attrs]
    try:
        for node, _ in dropout:
            node.attrs["dropout_rate"] = 0.0
        for node, _ in grad_factors:
            node.attrs["grad_factor"] = 1.0
        yield
    finally:
        for node, rate in dropout:
            node.attrs["dropout_rate"] = rate
        for node, factor in grad_factors:
            node.attrs["grad_factor"] = factor


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


class _DropEagerFallbackNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to the manual attention implementation" not in record.getMessage()


@contextmanager
def quiet_eager_fallback() -> Iterator[None]:
    """Hide Hugging Face's notice that an SDPA attention module falls back to its eager path: the view asks for
    that path on purpose (attention capture, detached attention), and the notice would read as a problem."""
    handlers = logging.getLogger("transformers").handlers
    notice_filter = _DropEagerFallbackNotice()
    for handler in handlers:
        handler.addFilter(notice_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(notice_filter)
