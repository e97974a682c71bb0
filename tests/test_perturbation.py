"""Perturbation methods over spaCy tokens, checked against Captum run on a forward function built from the
pipeline itself (the text with "[MASK]" in place of the removed tokens, which the tokenizer reads as its
mask token: another route to the same input), the planted key, Shapley efficiency, the number of forward
passes, every head kind, and side effects."""

import math

import numpy
import pytest
import torch
from captum.attr import KernelShap, Lime, Occlusion, ShapleyValueSampling
from spacy.tokens import Doc

from spacy_attrib import iter_attributions
from spacy_attrib.methods.base import doc_seed
from spacy_attrib.methods.perturbation import occlusion_windows
from spacy_attrib.view import DifferentiableView

from conftest import explain, make_method, planted_key_texts, weights_snapshot

TEXTS = ["the plot was dull and slow .", "this movie is very good !", "that actor was awful but the story was great ."]


def masked_doc(nlp, doc, removed):
    words = ["[MASK]" if t.i in removed else t.text for t in doc]
    return Doc(nlp.vocab, words=words, spaces=[bool(t.whitespace_) for t in doc])


def pipeline_forward(nlp, doc, labels):
    """f over binary keep/remove features of `doc`'s tokens: log p(label) that `nlp` predicts on the text
    with removed tokens masked, for each label (one column each)."""
    def forward(features: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in features:
            cats = nlp(masked_doc(nlp, doc, {i for i, keep in enumerate(row.tolist()) if keep == 0})).cats
            rows.append([math.log(cats[label]) for label in labels])
        return torch.tensor(rows, dtype=torch.float64)
    return forward


@pytest.mark.parametrize("window,stride", [(1, 1), (2, 1), (3, 2)])
def test_occlusion_agrees_with_captum(textcat_nlp, window, stride):
    _, docs = explain(textcat_nlp, "attr_occlusion", TEXTS, labels="all", window=window, stride=stride)
    for doc in docs:
        inputs = torch.ones((1, len(doc)), dtype=torch.float64)
        forward = pipeline_forward(textcat_nlp, doc, ["POS", "NEG"])
        for k, label in enumerate(["POS", "NEG"]):
            expected = Occlusion(forward).attribute(inputs, baselines=0, target=k, sliding_window_shapes=(window,),
                                                    strides=(stride,))[0].numpy()
            attribution = doc._.attributions["occlusion"][label]
            numpy.testing.assert_allclose(attribution.scores, expected, atol=1e-5)
            assert attribution.extras["removal"] == "mask"


def test_occlusion_windows_slide_as_captums_do():
    assert occlusion_windows(5, 1, 1) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert occlusion_windows(6, 3, 2) == [(0, 3), (2, 5), (4, 6)]  # the last window cut at the end
    assert occlusion_windows(2, 4, 1) == [(0, 2)]  # a doc shorter than the window: one window
    assert occlusion_windows(0, 1, 1) == []


@pytest.mark.parametrize("factory,captum_class,n_samples", [
    ("attr_lime", Lime, 40), ("attr_kernel_shap", KernelShap, 40), ("attr_shapley_sampling", ShapleyValueSampling, 3)])
def test_sampling_methods_agree_with_captum_on_the_same_samples(textcat_nlp, factory, captum_class, n_samples):
    component, docs = explain(textcat_nlp, factory, TEXTS, labels="all", n_samples=n_samples, seed=3)
    for doc in docs:
        inputs = torch.ones((1, len(doc)), dtype=torch.float64)
        method = captum_class(pipeline_forward(textcat_nlp, doc, ["POS", "NEG"]))
        for k, label in enumerate(["POS", "NEG"]):
            torch.manual_seed(doc_seed(3, doc))
            expected = method.attribute(inputs, baselines=torch.zeros_like(inputs), target=k, n_samples=n_samples)
            numpy.testing.assert_allclose(doc._.attributions[component.key][label].scores, expected[0].numpy(),
                                          atol=1e-5)


def test_shapley_sampling_is_efficient(textcat_nlp):
    _, docs = explain(textcat_nlp, "attr_shapley_sampling", TEXTS, n_samples=5)
    for doc in docs:
        (label, attribution), = doc._.attributions["shapley_sampling"].items()
        nothing = math.log(textcat_nlp(masked_doc(textcat_nlp, doc, set(range(len(doc))))).cats[label])
        # f(all) − f(none) whatever the number of permutations: each one's contributions telescope
        assert attribution.scores.sum() == pytest.approx(attribution.output - nothing, abs=1e-5)


def test_seeds_and_batching(textcat_nlp, texts):
    first = explain(textcat_nlp, "attr_lime", texts, n_samples=30, batch_size=8)[1]
    again = explain(textcat_nlp, "attr_lime", texts, n_samples=30, batch_size=1, internal_batch_size=3)[1]
    other = explain(textcat_nlp, "attr_lime", texts, n_samples=30, seed=1)[1]
    for a, b, c in zip(first, again, other):
        for label, attribution in a._.attributions["lime"].items():
            numpy.testing.assert_allclose(attribution.scores, b._.attributions["lime"][label].scores, atol=1e-6)
            if len(a) > 2:
                assert not numpy.allclose(attribution.scores, c._.attributions["lime"][label].scores)
    state = torch.random.get_rng_state()
    explain(textcat_nlp, "attr_shapley_sampling", texts[:2], n_samples=2)
    assert torch.equal(torch.random.get_rng_state(), state)  # the user's generator is left alone


def test_leave_one_out_ranks_the_planted_key_first(planted_key_nlp):
    cases = planted_key_texts(40, seed=7)
    _, docs = explain(planted_key_nlp, "attr_occlusion", [text for text, _, _ in cases])
    first = [int(numpy.argmax(a.scores)) == at for doc, (_, _, at) in zip(docs, cases)
             for a in doc._.attributions["occlusion"].values()]
    assert len(first) == len(cases) and sum(first) >= 0.95 * len(cases)  # measured: 39 of 40


def test_a_long_docs_leave_one_out_runs_in_few_forward_passes(textcat_nlp):
    words = (TEXTS[2].split() * 4)[:40]
    doc = textcat_nlp(Doc(textcat_nlp.vocab, words=words))
    component = make_method(textcat_nlp, "attr_occlusion", internal_batch_size=16, labels="all")
    calls = []
    hook = DifferentiableView(textcat_nlp).hf_model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        (pos, neg), = component.predict([doc])
    finally:
        hook.remove()
    assert len(calls) <= math.ceil(40 / 16) + 2
    assert not numpy.allclose(pos.scores, 0) and not numpy.allclose(neg.scores, 0)


def test_delete_rescores_the_shortened_text(textcat_nlp):
    _, docs = explain(textcat_nlp, "attr_occlusion", TEXTS[:1], removal="delete")
    doc = docs[0]
    (label, attribution), = doc._.attributions["occlusion"].items()
    for i in range(len(doc)):
        words = [t.text for t in doc if t.i != i]
        expected = attribution.output - math.log(textcat_nlp(Doc(textcat_nlp.vocab, words=words)).cats[label])
        assert attribution.scores[i] == pytest.approx(expected, abs=1e-5)
    assert attribution.extras == {"removal": "delete"}


def test_tagger_targets_keep_their_own_token_under_delete(tagger_nlp):
    _, docs = explain(tagger_nlp, "attr_occlusion", ["the movie was very good ."], removal="delete")
    for attribution in docs[0]._.attributions["occlusion"].values():
        assert attribution.scores[attribution.token] == 0
        assert numpy.abs(numpy.delete(attribution.scores, attribution.token)).max() > 0


def test_tagger_scores_are_what_the_view_gives_the_masked_text(tagger_nlp):
    _, docs = explain(tagger_nlp, "attr_occlusion", ["the movie was very good ."])
    doc = docs[0]
    view = DifferentiableView(tagger_nlp)
    with torch.no_grad():
        masked = [view.forward(view.encode([masked_doc(tagger_nlp, doc, {i})])).scores[0] for i in range(len(doc))]
    for attribution in list(doc._.attributions["occlusion"].values())[:3]:
        k = view.labels.index(attribution.label)
        expected = [attribution.output - float(m[attribution.token, k]) for m in masked]
        numpy.testing.assert_allclose(attribution.scores, expected, atol=1e-5)


@pytest.mark.parametrize("fixture", ["multilabel_nlp", "ner_nlp", "spancat_nlp"])
def test_every_head_kind_is_explained_with_its_targets(request, fixture):
    nlp = request.getfixturevalue(fixture)
    texts = ["we saw alex person there today", "kim company was here then"] if fixture == "ner_nlp" else TEXTS
    _, docs = explain(nlp, "attr_shapley_sampling", texts, n_samples=2)
    results = [(doc, a) for doc in docs for a in iter_attributions(doc)]
    assert results
    view = DifferentiableView(nlp)
    for doc, a in results:
        assert a.scores.shape == (len(doc),)
        # efficiency holds for every target: f(all) − f(all masked), read along the clean doc's plan
        batch = view.encode([doc])
        ids = batch.input_ids.clone()
        layout = batch.layout(0)
        ids.view(-1)[torch.as_tensor(layout.positions[[p for pieces in layout.alignment for p in pieces]])] = \
            view.tokenizer.mask_token_id
        with torch.no_grad():
            scores = view.forward(batch, input_ids=ids).scores[0]
        position = view.head.position(batch.plan, 0, a.token, a.span, a.label)
        assert a.scores.sum() == pytest.approx(a.output - float(scores[position, view.labels.index(a.label)]), abs=1e-5)


def test_ner_refuses_delete(ner_nlp):
    with pytest.raises(ValueError, match="'delete' is not defined for the ner"):
        explain(ner_nlp, "attr_occlusion", ["we saw alex person there today"], removal="delete")


def test_nothing_changes_in_the_model(textcat_nlp, texts):
    hf = DifferentiableView(textcat_nlp).hf_model
    grads = [None if p.grad is None else p.grad.clone() for p in hf.parameters()]  # (left by training)
    before = weights_snapshot(textcat_nlp)
    explain(textcat_nlp, "attr_kernel_shap", texts, n_samples=10)
    explain(textcat_nlp, "attr_occlusion", texts, window=2)
    after = weights_snapshot(textcat_nlp)
    assert before.keys() == after.keys()
    for key in before:
        assert numpy.array_equal(numpy.asarray(before[key]), numpy.asarray(after[key])), key
    for param, grad in zip(hf.parameters(), grads):
        assert (param.grad is None) if grad is None else torch.equal(param.grad, grad)


def test_bad_settings_name_the_problem(textcat_nlp):
    with pytest.raises(ValueError, match="stride \\(3\\) must not exceed window \\(2\\)"):
        make_method(textcat_nlp, "attr_occlusion", window=2, stride=3)
    with pytest.raises(ValueError, match="n_samples must be at least 1"):
        make_method(textcat_nlp, "attr_lime", n_samples=0)
    with pytest.raises(Exception, match="removal"):
        make_method(textcat_nlp, "attr_lime", removal="drop")
