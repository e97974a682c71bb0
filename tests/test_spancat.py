"""The spancat head: its own predictions, every label in one pass, overlapping spans, bad input."""

import numpy
import pytest
import torch
from captum.attr import InputXGradient

from spacy_attrib.view import DifferentiableView

from conftest import explain, make_method

TEXTS = ["this movie is very good !", "that actor was awful but the story was great .",
         "a really brilliant , quite wonderful movie .", "it was fun"]


def span_results(docs, key):
    return {(d, span.start, span.end, label): attribution
            for d, doc in enumerate(docs) for span in doc.spans["sc"]
            for label, attribution in span._.attributions.get(key, {}).items()}


@pytest.fixture(params=["spancat_nlp", "spancat_singlelabel_nlp"])
def any_spancat(request):
    return request.getfixturevalue(request.param)


def test_targets_and_scores_are_the_components_own(any_spancat):
    docs = list(any_spancat.pipe(TEXTS))
    view = DifferentiableView(any_spancat, output="prob")
    assert view.exclusive == (any_spancat.pipe_names[1] == "spancat_singlelabel")
    batch = view.encode(docs)
    with view.frozen(), torch.no_grad():
        output = view.forward(batch)
    targets = view.targets(batch, output, "predicted")
    for d, doc in enumerate(docs):
        group = doc.spans["sc"]
        assert [(t.span, t.label) for t in targets[d]] == [((s.start, s.end), s.label_) for s in group]
        got = [float(output.scores[d, t.position, t.label_index]) for t in targets[d]]
        numpy.testing.assert_allclose(got, numpy.ravel(group.attrs["scores"]), atol=1e-5)
    assert sum(len(doc.spans["sc"]) for doc in docs) >= 8


def test_overlapping_spans_are_each_explained(spancat_nlp):
    _, (doc,) = explain(spancat_nlp, "attr_integrated_gradients", ["this movie is very good !"])
    extents = {(s.start, s.end): s.label_ for s in doc.spans["sc"]}
    assert {(3, 5), (4, 5)} <= set(extents)  # "very good" (INTENSE) overlaps "good" (SENTIMENT)
    for span in doc.spans["sc"]:
        attribution = span._.attributions["integrated_gradients"][span.label_]
        assert attribution.span == (span.start, span.end)
        assert attribution.extras["converged"]
        assert attribution.extras["relative_delta"] <= 0.01 or abs(attribution.delta) <= 1e-3


@pytest.mark.parametrize("factory", ["attr_gradient_x_input", "attr_integrated_gradients"])
def test_all_labels_in_one_pass_equal_per_label_runs(spancat_nlp, factory):
    key = factory[len("attr_"):]
    settings = {"n_steps": 16} if factory == "attr_integrated_gradients" else {}
    _, docs = explain(spancat_nlp, factory, TEXTS, labels="all", **settings)
    every = span_results(docs, key)
    labels = spancat_nlp.get_pipe("spancat").labels
    assert {k[3] for k in every} == set(labels)
    for label in labels:
        _, alone = explain(spancat_nlp, factory, TEXTS, labels=[label], **settings)
        for (d, start, end, got_label), attribution in span_results(alone, key).items():
            assert got_label == label
            numpy.testing.assert_allclose(every[d, start, end, label].wordpiece_scores, attribution.wordpiece_scores,
                                          atol=1e-5)


def test_span_gradient_x_input_matches_captum(spancat_nlp):
    component, (doc,) = explain(spancat_nlp, "attr_gradient_x_input", ["that actor was awful but the story was great ."])
    view = component.view
    batch = view.encode([doc])
    with view.frozen(), torch.no_grad():
        targets = {(t.span, t.label): t for t in view.targets(batch, view.forward(batch), "predicted")[0]}
    for span in doc.spans["sc"]:
        target = targets[(span.start, span.end), span.label_]

        def f(inputs):
            return view.forward(batch, inputs, doc_index=[0] * inputs.shape[0]).scores[:, target.position,
                                                                                         target.label_index]

        with view.frozen():
            expected = InputXGradient(f).attribute(view.capture(batch)).detach()
        ours = span._.attributions["gradient_x_input"][span.label_]
        numpy.testing.assert_allclose(ours.wordpiece_scores, expected.sum(-1)[0].numpy(), atol=1e-5)


def test_docs_without_spans_and_bad_labels(spancat_nlp):
    _, (doc,) = explain(spancat_nlp, "attr_saliency", ["the was , ."])
    assert not len(doc.spans["sc"]) and doc._.attributions == {"saliency": {}}
    component = make_method(spancat_nlp, "attr_saliency", labels=["PERSON"])
    with pytest.raises(ValueError, match=r"Unknown label\(s\) \['PERSON'\] for component 'spancat'"):
        component(spancat_nlp.make_doc("good"))
