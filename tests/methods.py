"""The catalogue of attribution methods, with the cheap settings the reliability suite runs them at.

A method joins `tests/test_reliability.py` (every head kind, hostile inputs, misuse, invariants) by one entry
in `CATALOGUE`, keyed by its factory name; `test_every_factory_is_catalogued` fails for an ``attr_*`` factory
of `pyproject.toml` that is neither here nor in `EXCLUDED` (with the reason), so none escapes the suite.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

# The head kinds of the suite, each with the session fixture (tests/conftest.py) of its tiny pipeline.
HEADS = {"textcat": "textcat_nlp", "textcat_multilabel": "multilabel_nlp", "tagger": "tagger_nlp",
         "ner": "ner_nlp", "spancat": "spancat_nlp", "spancat_singlelabel": "spancat_singlelabel_nlp"}
ALL_HEADS = tuple(HEADS)


@dataclass(frozen=True)
class Refusal:
    """A combination a method refuses on purpose: `settings` on the `heads` (all by default) must raise a
    ValueError whose message matches `message` (a regex), at creation or on the first doc."""

    settings: Dict[str, Any]
    message: str
    heads: Tuple[str, ...] = ("textcat",)


@dataclass(frozen=True)
class Method:
    """How the suite runs one factory.

    settings: cheap settings (few samples, steps, candidates) on top of the factory's defaults.
    fits_state: the component must be `initialize`d on examples before use (the suite checks that it
        says so, and that a call before `initialize` is a ValueError naming it).
    needs_mlm: the `mlm` setting must name a masked LM of the explained transformer's vocabulary.
    skips_long_doc: why the 5,000-token doc is not given to it (None: it is, on the doc-level heads).
    refusals: the combinations it refuses on purpose.
    trains: the component is trained with `spacy train` (a TrainablePipe with a probe): the suite
        `initialize`s it, untrained, before use (and checks that a call before is a ValueError naming
        `initialize`); what training does is its own test file's.
    heads: the head kinds it explains; on the others it must refuse (list that in `refusals`).
    pipeline: the pipelines it explains: ``plain`` (each head kind's trained pipeline) or ``vmask`` (their
        VMASK twins, `conftest.vmask_twin`: the same weights under a VMASK transformer, for a method that reads
        what only a VMASK-trained model has).
    """

    settings: Dict[str, Any] = field(default_factory=dict)
    fits_state: bool = False
    needs_mlm: bool = False
    skips_long_doc: Optional[str] = None
    refusals: Tuple[Refusal, ...] = ()
    trains: bool = False
    heads: Tuple[str, ...] = ALL_HEADS
    pipeline: str = "plain"


PER_TOKEN_PASSES = "one forward pass per token and more: 5,000 tokens × 40 windows is minutes on 2 cores"
NO_DELETE_FOR_NER = Refusal({"removal": "delete"}, "removal 'delete' is not defined for the ner", heads=("ner",))

CATALOGUE: Dict[str, Method] = {
    "attr_saliency": Method(),
    "attr_gradient_x_input": Method(),
    "attr_smoothgrad": Method({"n_samples": 2}),
    "attr_integrated_gradients": Method({"n_steps": 4}),
    "attr_random": Method(),
    "attr_attention": Method(refusals=(Refusal({"heads": [7]}, r"heads \[7\] out of range"),)),
    "attr_attention_rollout": Method(),
    "attr_lat": Method(),
    "attr_lrp": Method(refusals=(Refusal({"rule": "wu_ong", "attribute_at": 1},
                                         "rule 'wu_ong' propagates relevance to the embedding output"),)),
    "attr_information_bottleneck": Method({"steps": 2, "n_samples": 2}, fits_state=True,
                                          refusals=(Refusal({"output": "prob"}, "output must be 'log_prob'"),)),
    "attr_occlusion": Method(skips_long_doc=PER_TOKEN_PASSES, refusals=(NO_DELETE_FOR_NER,)),
    "attr_lime": Method({"n_samples": 8}, refusals=(NO_DELETE_FOR_NER,)),
    "attr_shapley_sampling": Method({"n_samples": 1}, skips_long_doc=PER_TOKEN_PASSES, refusals=(NO_DELETE_FOR_NER,)),
    "attr_kernel_shap": Method({"n_samples": 8}, refusals=(NO_DELETE_FOR_NER,)),
    "attr_input_marginalization": Method({"max_candidates": 3}, needs_mlm=True, skips_long_doc=PER_TOKEN_PASSES,
                                         refusals=(Refusal({"output": "log_prob"}, "defined on probabilities"),)),
    "attr_lafa": Method({"max_examples": 8}, fits_state=True),
    "attr_diffmask": Method(trains=True, heads=("textcat", "textcat_multilabel"),
                            refusals=(Refusal({}, "attr_diffmask explains doc-level classifiers",
                                              heads=("tagger", "ner", "spancat", "spancat_singlelabel")),)),
    "attr_vmask": Method(pipeline="vmask"),
}

# attr_* factories the suite does not run, each with the reason.
EXCLUDED: Dict[str, str] = {}
