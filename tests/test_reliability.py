"""The reliability suite: every catalogued method (`tests/methods.py`) on the tiny pipeline of every head kind,
against hostile inputs and misuse, with the invariants attribution promises.

- Hostile inputs (`HOSTILE`) give, for every method × head, finite scores of the right length (one per spaCy
  token, wordpiece scores aligned, 0 for a token without wordpieces) or an empty result; the weights stay
  bit-identical, no parameter gets a gradient, and the same docs give the same result twice.
- A 5,000-token doc (`test_a_5000_token_doc`) on the doc-level heads only: a per-token or per-span head
  explains each of its targets over the whole doc, 5,000 × 5,000 scores (the tagger took over 100 s with
  `attr_random`, the cheapest method); the methods whose cost grows with tokens × passes skip it (their
  `skips_long_doc`).
- Misuse (no transformer, a head that does not listen, an unknown label or head, bfloat16 where the device
  cannot run it, a stateful method before `initialize`) and each method's refusals on purpose give a
  ValueError naming the problem.
- Pickling a pipeline with attribution components, and `nlp.pipe(n_process=2)`, give the same results.
- Every renderer escapes hostile text.

A method whose catalogue entry names the ``vmask`` pipeline (attr_vmask) runs on each head's VMASK twin instead
(`conftest.vmask_twin`: the trained weights under a VMASK transformer with a new mask).
"""

import pickle
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy
import pytest
import spacy
import torch
from spacy.language import Language
from spacy.training import Example

from conftest import (build_pipeline, examples_of, initialized, make_masked_lm, make_method, make_tiny_bert,
                      toy_texts, transformer_config, trigger_sentence, weights_snapshot)
from methods import ALL_HEADS, CATALOGUE, EXCLUDED, HEADS, Method
from spacy_attrib import Attribution, Interaction, iter_attributions, render
from spacy_attrib.attribution import set_attribution
from spacy_attrib.render import render_interaction
from spacy_attrib.view import transformer as view_transformer

# A sentence each head has targets in (the ner fixture's trigger task: "city" makes "alex" a LOC).
CARRIER = {"ner": "we met alex at the city"}
DEFAULT_CARRIER = "this movie is very good !"

HOSTILE: Dict[str, Callable[[str], str]] = {
    "empty": lambda text: "",
    "whitespace only": lambda text: " \n\t \u3000 ",
    "control characters": lambda text: "\x00" + text.replace(" ", " \x07", 2) + " \x1b\x7f",
    "zero-width spaces": lambda text: "\u200b " + text.replace(" ", "\u200b ") + " \u200d\ufeff",
    "emoji": lambda text: "😀 " + text + " 👍🏽 🎬🍿",
    "RTL text": lambda text: text + " הסרט היה טוב מאוד الفيلم جيد \u202e",
    "one 3,000-character token": lambda text: "good" * 750,
    "all wordpieces [UNK]": lambda text: "zzq qqx xjj vvw",
}
CARRIED = ("control characters", "zero-width spaces", "emoji", "RTL text")
REPEAT_TOLERANCE = 1e-5
LONG_DOC_TOKENS = 5000
LONG_DOC_HEADS = ("textcat", "textcat_multilabel")


def carrier(head: str) -> str:
    return CARRIER.get(head, DEFAULT_CARRIER)


def training_texts(head: str) -> List[str]:
    """What stateful methods are initialized on: the head's own toy task."""
    if head == "ner":
        import random

        rng = random.Random(1)
        return [" ".join(trigger_sentence(rng)[0]) for _ in range(8)]
    return [text for text, _ in toy_texts(8)]


@pytest.fixture(scope="module")
def masked_lm_of(tmp_path_factory) -> Callable[[Language], str]:
    """A random masked LM of the pipeline's own transformer vocabulary (what `needs_mlm` methods read), one
    per transformer."""
    made: Dict[str, str] = {}

    def of(nlp: Language) -> str:
        bert = nlp.config["components"]["transformer"]["model"]["name"]
        if bert not in made:
            made[bert] = make_masked_lm(tmp_path_factory.mktemp("masked_lm"), Path(bert))
        return made[bert]

    return of


@pytest.fixture
def pipeline_for(request, vmask_twin_of) -> Callable[[str, str], Language]:
    """`pipeline_for(head, factory)`: the trained pipeline of `head` that `factory` explains (its catalogue
    entry's `pipeline`: the head's session fixture, or its VMASK twin)."""

    def of(head: str, factory: str) -> Language:
        return twin_if_needed(request.getfixturevalue(HEADS[head]), factory, vmask_twin_of)

    return of


def twin_if_needed(nlp: Language, factory: str, vmask_twin_of: Callable[[Language], Language]) -> Language:
    return pipeline_of(nlp, CATALOGUE[factory].pipeline, vmask_twin_of)


def pipeline_of(nlp: Language, pipeline: str, vmask_twin_of: Callable[[Language], Language]) -> Language:
    """`nlp` itself for the ``plain`` pipeline, its VMASK twin for ``vmask`` (a catalogue entry's `pipeline`)."""
    return vmask_twin_of(nlp) if pipeline == "vmask" else nlp


@pytest.fixture
def method_for(masked_lm_of):
    """`method_for(nlp, head, factory, **settings)`: the factory's component at the catalogue's settings (and
    `settings`), initialized on the head's toy task where it fits state."""

    def make(nlp: Language, head: str, factory: str, **settings):
        entry = CATALOGUE[factory]
        config = {**entry.settings, **({"mlm": masked_lm_of(nlp)} if entry.needs_mlm else {}), **settings}
        if entry.fits_state or entry.trains:
            return initialized(nlp, factory, training_texts(head), **config)
        return make_method(nlp, factory, **config)

    return make


def explained(nlp: Language, component, texts: List[str]) -> list:
    docs = list(nlp.pipe(texts))
    component.set_annotations(docs, component.predict(docs))
    return docs


def check_result(doc, key: str, what: str) -> int:
    """Every result of `key` on `doc` is finite and of the doc's length (a score per token, 0 for a token
    the transformer saw no wordpiece of, as `Attribution.scores` promises; wordpiece scores aligned); a doc without tokens has none. Returns
    the number of results."""
    assert key in doc._.attributions, f"{what}: not marked as explained"
    results = [a for a in iter_attributions(doc) if a.method == key]
    if not len(doc):
        assert results == [], what
    for a in results:
        assert a.scores.shape == (len(doc),), what
        assert numpy.isfinite(a.scores).all() and numpy.isfinite(a.wordpiece_scores).all(), what
        assert numpy.isfinite(a.output), what
        assert len(a.wordpiece_scores) == len(a.wordpieces), what
        assert len(a.alignment) == len(doc), what
        assert all(0 <= i < len(a.wordpieces) for pieces in a.alignment for i in pieces), what
        # 0 up to float error: KernelSHAP's weighted regression puts ~3e-8 on a feature that changes nothing.
        unseen = [i for i, pieces in enumerate(a.alignment) if not pieces]
        bound = 1e-6 * max(1.0, float(numpy.abs(a.scores).max(initial=0.0)))
        assert (numpy.abs(a.scores[unseen]) <= bound).all(), \
            f"{what}: tokens without wordpieces {unseen} scored {a.scores[unseen]}"
        for name, value in a.extras.items():
            if isinstance(value, float):
                assert numpy.isfinite(value), f"{what}: extras[{name!r}] = {value}"
        if a.token is not None:
            assert 0 <= a.token < len(doc), what
        if a.span is not None:
            assert 0 <= a.span[0] < a.span[1] <= len(doc), what
    return len(results)


def assert_same_results(first, second, what: str, tolerance: float = 0.0) -> None:
    """The same results on two docs: bit for bit, or within `tolerance` of each result's largest |score|."""
    a, b = list(iter_attributions(first)), list(iter_attributions(second))
    assert [(x.method, x.label, x.token, x.span) for x in a] == [(x.method, x.label, x.token, x.span) for x in b], what
    for x, y in zip(a, b):
        scale = tolerance * max(float(numpy.abs(x.wordpiece_scores).max(initial=0.0)), 1e-12)
        numpy.testing.assert_allclose(y.wordpiece_scores, x.wordpiece_scores, rtol=0, atol=scale, err_msg=what)
        numpy.testing.assert_allclose(y.scores, x.scores, rtol=0, atol=scale * len(x.wordpieces), err_msg=what)
        assert y.output == pytest.approx(x.output, rel=tolerance, abs=tolerance), what


# -- the catalogue --------------------------------------------------------------------------------
def test_every_factory_is_catalogued():
    """Each attr_* factory of pyproject.toml is run by the suite or excluded with a reason, and the catalogue
    names no factory the package does not declare."""
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf8"))
    declared = {name for name in pyproject["project"]["entry-points"]["spacy_factories"] if name.startswith("attr_")}
    missing = declared - set(CATALOGUE) - set(EXCLUDED)
    assert not missing, f"add {sorted(missing)} to CATALOGUE (or EXCLUDED, with the reason) in tests/methods.py"
    assert set(CATALOGUE) | set(EXCLUDED) <= declared
    assert not set(CATALOGUE) & set(EXCLUDED)
    assert all(reason for reason in EXCLUDED.values())
    assert all(Language.has_factory(factory) for factory in CATALOGUE)


@pytest.mark.parametrize("factory", sorted(CATALOGUE))
def test_the_catalogue_says_which_methods_fit_state(textcat_nlp, factory):
    assert make_method(textcat_nlp, factory, **CATALOGUE[factory].settings).fits_state == CATALOGUE[factory].fits_state


# -- hostile inputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ALL_HEADS)
@pytest.mark.parametrize("factory", sorted(CATALOGUE))
def test_hostile_inputs(pipeline_for, method_for, factory, head):
    """Every hostile input gives finite scores of the doc's length or an empty result; the model is left
    bit-identical without parameter gradients; the docs that carry the head's sentence give the same
    results twice (the HF module is
    put in train mode first, as spacy-transformers leaves it, so a method running with dropout would
    differ)."""
    if head not in CATALOGUE[factory].heads:
        pytest.skip(f"{factory} does not explain {head} heads (its refusal is tested)")
    nlp = pipeline_for(head, factory)
    hf = nlp.get_pipe("transformer").model.transformer
    hf.train()
    before = weights_snapshot(nlp)
    head_model = nlp.get_pipe(head).model
    thinc_grads_before = {(node.id, name) for node in head_model.walk() for name in node.grad_names}
    torch_grads_before = [None if p.grad is None else p.grad.clone() for p in hf.parameters()]

    component = method_for(nlp, head, factory)
    texts = [make(carrier(head)) for make in HOSTILE.values()]
    first = explained(nlp, component, texts)
    # Again on the docs with targets and text around the hostile characters (the rest is cheap to skip).
    # Without the others the batch is padded to another width, so float32 sums may run in another order:
    # equal within REPEAT_TOLERANCE of each result's largest score (measured: 1.0e-7 absolute, 2e-6 of the
    # largest, on input marginalization's multilabel RTL doc), not bit for bit.
    repeated = [name for name in HOSTILE if name in CARRIED]
    second = explained(nlp, component, [texts[list(HOSTILE).index(name)] for name in repeated])

    n_results = sum(check_result(doc, component.key, f"{factory} on {head}, {name}")
                    for name, doc in zip(HOSTILE, first))
    assert n_results >= 5, "too few results to test anything"
    for name, again in zip(repeated, second):
        assert_same_results(first[list(HOSTILE).index(name)], again, f"{factory} on {head}, {name}", REPEAT_TOLERANCE)
    after = weights_snapshot(nlp)
    assert before.keys() == after.keys()
    for key, value in before.items():
        same = torch.equal(value, after[key]) if isinstance(value, torch.Tensor) else numpy.array_equal(value, after[key])
        assert same, key
    for param, grad in zip(hf.parameters(), torch_grads_before):
        assert (param.grad is None) if grad is None else torch.equal(param.grad, grad)
    assert {(node.id, name) for node in head_model.walk() for name in node.grad_names} == thinc_grads_before
    assert hf.training


def test_the_hostile_inputs_are_what_they_claim(textcat_nlp):
    """The transformer sees no wordpiece of the whitespace doc, and only [UNK] of the [UNK] doc and the
    3,000-character token; the zero-width spaces are tokens without wordpieces."""
    docs = explained(textcat_nlp, make_method(textcat_nlp, "attr_random"),
                     [make(DEFAULT_CARRIER) for make in HOSTILE.values()])
    by_name = dict(zip(HOSTILE, docs))
    pieces = {name: next(iter_attributions(doc)) for name, doc in by_name.items() if len(doc)}
    assert pieces["whitespace only"].wordpieces == ["[CLS]", "[SEP]"]
    assert pieces["all wordpieces [UNK]"].wordpieces == ["[CLS]"] + ["[UNK]"] * 4 + ["[SEP]"]
    assert len(by_name["one 3,000-character token"]) == 1
    assert pieces["one 3,000-character token"].wordpieces == ["[CLS]", "[UNK]", "[SEP]"]
    assert [] in pieces["zero-width spaces"].alignment


@pytest.fixture(scope="module")
def long_doc_pipelines(tmp_path_factory) -> Dict[str, Language]:
    """The doc-level heads on a tiny BERT with 512 positions: the session fixtures' 128 positions cannot hold
    a 128-token window of the long doc and its special tokens (spacy-transformers itself fails on it)."""
    bert = make_tiny_bert(tmp_path_factory.mktemp("bert_512"), max_positions=512)
    return {head: build_pipeline(bert, head) for head in LONG_DOC_HEADS}


@pytest.mark.parametrize("head", LONG_DOC_HEADS)
@pytest.mark.parametrize("factory", sorted(f for f, m in CATALOGUE.items() if m.skips_long_doc is None))
def test_a_5000_token_doc(long_doc_pipelines, vmask_twin_of, method_for, factory, head):
    nlp = twin_if_needed(long_doc_pipelines[head], factory, vmask_twin_of)
    words = (DEFAULT_CARRIER.split() * LONG_DOC_TOKENS)[:LONG_DOC_TOKENS]
    component = method_for(nlp, head, factory)
    (doc,) = explained(nlp, component, [" ".join(words)])
    assert len(doc) == LONG_DOC_TOKENS
    assert check_result(doc, component.key, f"{factory} on {head}") >= 1


# -- misuse and refusals ----------------------------------------------------------------------------
def toy_examples(nlp: Language) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"cats": {"POS": float(label == "POS"), "NEG": float(label == "NEG")}})
            for text, label in toy_texts(8)]


@pytest.fixture(scope="module")
def no_transformer_nlp() -> Language:
    """A textcat on spaCy's own tok2vec: nothing to explain."""
    nlp = spacy.blank("en")
    nlp.add_pipe("textcat")
    nlp.initialize(lambda: toy_examples(nlp))
    return nlp


@pytest.fixture(scope="module")
def deaf_nlp(tiny_bert) -> Language:
    """A transformer and a textcat that does not listen to it (its own tok2vec)."""
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config=transformer_config(tiny_bert))
    nlp.add_pipe("textcat")
    nlp.initialize(lambda: toy_examples(nlp))
    return nlp


def use(nlp: Language, component, text: str = DEFAULT_CARRIER) -> None:
    """What a user does with a component: initialize it, then explain a doc."""
    component.initialize(lambda: examples_of(nlp, training_texts("textcat")), nlp=nlp)
    component(nlp(text))


MISUSE = {
    "no transformer": ("no_transformer_nlp", {}, "has no spacy-transformers 'transformer' component"),
    "no head listens": ("deaf_nlp", {}, "No supported head listens to the transformer"),
    "the head does not listen": ("deaf_nlp", {"head": "textcat"}, "'textcat' does not listen to the transformer"),
    "unknown label": ("textcat_nlp", {"labels": ["NOPE"]}, r"Unknown label\(s\) \['NOPE'\]"),
    "labels 'all' on ner": ("ner_nlp", {"labels": "all"}, "labels = 'all' is not defined for the ner"),
    "unknown head": ("textcat_nlp", {"head": "nope"}, "No component named 'nope'"),
    "the head is no head": ("textcat_nlp", {"head": "transformer"}, "'transformer' .* is not a supported head kind"),
    "an unknown dtype": ("textcat_nlp", {"dtype": "float16"}, "dtype"),
}


@pytest.mark.parametrize("misuse", sorted(MISUSE))
@pytest.mark.parametrize("factory", sorted(CATALOGUE))
def test_misuse_is_a_clear_error(request, masked_lm_of, factory, misuse):
    fixture, settings, message = MISUSE[misuse]
    nlp = request.getfixturevalue(fixture)
    entry = CATALOGUE[factory]
    config = {**entry.settings, **({"mlm": masked_lm_of(request.getfixturevalue("textcat_nlp"))} if entry.needs_mlm else {}),
              **settings}
    with pytest.raises(ValueError, match=message):
        use(nlp, make_method(nlp, factory, **config), carrier("ner" if fixture == "ner_nlp" else "textcat"))


@pytest.mark.parametrize("factory", sorted(CATALOGUE))
def test_bfloat16_where_torch_cannot_autocast(textcat_nlp, method_for, monkeypatch, factory):
    """On a device type torch has no autocast for, dtype bfloat16 is refused by name before any doc (torch
    itself raises a RuntimeError mid-pass; on a CUDA device without bfloat16 the same)."""
    monkeypatch.setattr(torch.amp.autocast_mode, "is_autocast_available", lambda device_type: False)
    with pytest.raises(ValueError, match="dtype 'bfloat16' is not supported on cpu"):
        use(textcat_nlp, method_for(textcat_nlp, "textcat", factory, dtype="bfloat16"))


def test_bfloat16_on_a_cuda_device_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.raises(ValueError, match="dtype 'bfloat16' is not supported on cuda.*does not support bfloat16"):
        view_transformer.check_autocast(torch.device("cuda"), torch.bfloat16)
    view_transformer.check_autocast(torch.device("cuda"), torch.float32)


@pytest.mark.parametrize("factory", sorted(f for f, m in CATALOGUE.items() if m.fits_state or m.trains))
def test_a_stateful_method_before_initialize(textcat_nlp, factory):
    component = make_method(textcat_nlp, factory, **CATALOGUE[factory].settings)
    with pytest.raises(ValueError, match=r"initialize\(get_examples\)"):
        component(textcat_nlp(DEFAULT_CARRIER))


REFUSALS = [(factory, refusal, head) for factory, entry in sorted(CATALOGUE.items())
            for refusal in entry.refusals for head in refusal.heads]


@pytest.mark.parametrize("factory,refusal,head", REFUSALS,
                         ids=[f"{factory}-{head}-{sorted(r.settings)}" for factory, r, head in REFUSALS])
def test_refusals_on_purpose(request, method_for, factory, refusal, head):
    nlp = request.getfixturevalue(HEADS[head])
    with pytest.raises(ValueError, match=refusal.message):
        method_for(nlp, head, factory, **refusal.settings)(nlp(carrier(head)))


# -- pickling and processes -------------------------------------------------------------------------
PIPE_TEXTS = {"ner": ["we met alex at the city", "sam was there with a person", "then kim saw the company"]}
DEFAULT_PIPE_TEXTS = ["this movie is very good !", "the plot was dull and slow .", "it was fun"]


@pytest.fixture(scope="module")
def explaining_nlp(request, masked_lm_of, vmask_twin_of) -> Callable[[str, str], Language]:
    """`explaining_nlp(head, pipeline)`: a copy of the head's pipeline (pickled: the session fixture stays as it
    was), or of its VMASK twin, with every catalogued method of that `pipeline` added, fitted where it fits
    state."""
    made: Dict[Tuple[str, str], Language] = {}

    def of(head: str, pipeline: str) -> Language:
        if (head, pipeline) not in made:
            nlp = pickle.loads(pickle.dumps(pipeline_of(request.getfixturevalue(HEADS[head]), pipeline, vmask_twin_of)))
            for factory, entry in sorted(methods_of(pipeline).items()):
                if head not in entry.heads:
                    continue
                config = {**entry.settings, **({"mlm": masked_lm_of(nlp)} if entry.needs_mlm else {})}
                component = nlp.add_pipe(factory, config=config)
                if entry.fits_state or entry.trains:
                    component.initialize(lambda: examples_of(nlp, training_texts(head)), nlp=nlp)
            made[head, pipeline] = nlp
        return made[head, pipeline]

    return of


def methods_of(pipeline: str) -> Dict[str, Method]:
    return {factory: entry for factory, entry in CATALOGUE.items() if entry.pipeline == pipeline}


PIPELINES = sorted({entry.pipeline for entry in CATALOGUE.values()})


def all_results(docs) -> int:
    return sum(len(list(iter_attributions(doc))) for doc in docs)


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("head", ALL_HEADS)
def test_a_pickled_pipeline_explains_the_same(explaining_nlp, head, pipeline):
    nlp = explaining_nlp(head, pipeline)
    texts = PIPE_TEXTS.get(head, DEFAULT_PIPE_TEXTS)
    restored = pickle.loads(pickle.dumps(nlp))
    assert restored.pipe_names == nlp.pipe_names
    expected = list(nlp.pipe(texts))
    assert {key for doc in expected for key in doc._.attributions} == {nlp.get_pipe(f).key for f in methods_of(pipeline)
                                                                        if head in CATALOGUE[f].heads}
    for doc, again in zip(expected, restored.pipe(texts)):
        assert_same_results(doc, again, f"pickled {head} pipeline")


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("head", ALL_HEADS)
def test_two_processes_equal_one(explaining_nlp, head, pipeline):
    """Every catalogued method in one pipeline: nlp.pipe(n_process=2) gives what one process gives, up to float
    error (the children run torch on one thread and explain one doc at a time, which changes the order of
    float sums: measured up to 3.7e-5 of the largest score, spancat_singlelabel)."""
    nlp = explaining_nlp(head, pipeline)
    texts = PIPE_TEXTS.get(head, DEFAULT_PIPE_TEXTS)
    serial = list(nlp.pipe(texts))
    parallel = list(nlp.pipe(texts, n_process=2, batch_size=1))
    assert all_results(serial) >= sum(head in m.heads for m in methods_of(pipeline).values()) * len(texts)
    for doc, other in zip(serial, parallel):
        assert_same_results(doc, other, f"{head}, n_process=2", tolerance=1e-4)


# -- rendering --------------------------------------------------------------------------------------
MARKUP = """<script>alert("x")</script> & 'q' "<b>" <img src=x onerror=alert(1)>"""
OWN_TAGS = {"html", "head", "meta", "title", "style", "body", "div", "span", "table", "thead", "tbody", "tr",
            "th", "td"}


class Markup(HTMLParser):
    """The tags and the text of an HTML string."""

    def __init__(self, markup: str):
        super().__init__()
        self.tags: List[str] = []
        self.text: List[str] = []
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def assert_escaped(markup: str, *texts: str) -> None:
    """Only the renderer's own tags, and the hostile texts back as text."""
    parsed = Markup(markup)
    assert set(parsed.tags) <= OWN_TAGS, set(parsed.tags) - OWN_TAGS
    content = "".join(parsed.text)
    for text in texts:
        assert text in content


def hostile_attribution(doc, **where) -> Attribution:
    n = len(doc)
    return Attribution(method=MARKUP, label=MARKUP, scores=numpy.linspace(-1, 1, n, dtype="float32"),
                       wordpieces=[MARKUP] * n, wordpiece_scores=numpy.ones(n, dtype="float32"),
                       alignment=[[i] for i in range(n)], output=0.5, extras={"delta": 0.1}, **where)


@pytest.mark.parametrize("options", [{}, {"page": True}, {"minify": True}])
def test_render_escapes_hostile_text(tagger_nlp, options):
    """Real results on a doc of markup (tokens, and a tagger's token targets in the headings), and results
    whose method and label are markup, on doc, token and span targets."""
    component = make_method(tagger_nlp, "attr_saliency")
    (doc,) = explained(tagger_nlp, component, [MARKUP])
    assert_escaped(render(doc, "saliency", jupyter=False, **options), *(token.text for token in doc))
    for where in ({}, {"token": 1}, {"span": (0, 3)}):
        plain = spacy.blank("en")(MARKUP)
        set_attribution(plain, hostile_attribution(plain, **where))
        assert_escaped(render(plain, jupyter=False, **options), MARKUP, doc[:3].text)


@pytest.mark.parametrize("wordpieces", [False, True])
@pytest.mark.parametrize("page", [False, True])
def test_render_interaction_escapes_hostile_text(wordpieces, page):
    tokens = (MARKUP, "&amp;", "</td>")
    interaction = Interaction(method=MARKUP, matrix=numpy.eye(3, dtype="float32"), tokens_a=tokens, tokens_b=tokens,
                              wordpiece_matrix=numpy.eye(3, dtype="float32"), wordpieces_a=list(tokens),
                              wordpieces_b=list(tokens), alignment_a=[[0], [1], [2]], alignment_b=[[0], [1], [2]],
                              output=0.5, extras={"error": 1e-3})
    assert_escaped(render_interaction(interaction, wordpieces=wordpieces, page=page, jupyter=False), MARKUP, *tokens)
