"""Saliency, gradient × input, SmoothGrad/VarGrad against Captum on the same function."""

import numpy
import pytest
import torch
from captum.attr import InputXGradient, NoiseTunnel
from captum.attr import Saliency as CaptumSaliency

from conftest import explain

TEXT = "that actor was awful but the story was great ."


def site_function(view, batch, label_index):
    def f(inputs):
        return view.forward(batch, inputs, doc_index=[0] * inputs.shape[0]).scores[:, 0, label_index]
    return f


def captum_setup(component, doc, label):
    view = component.view
    batch = view.encode([doc])
    return view, batch, site_function(view, batch, view.labels.index(label))


def test_gradient_x_input_matches_captum(textcat_nlp):
    component, (doc,) = explain(textcat_nlp, "attr_gradient_x_input", [TEXT], labels="all")
    for label, ours in doc._.attributions["gradient_x_input"].items():
        view, batch, f = captum_setup(component, doc, label)
        with view.frozen():
            expected = InputXGradient(f).attribute(view.capture(batch)).detach()
        numpy.testing.assert_allclose(ours.wordpiece_scores, expected.sum(-1)[0].numpy(), atol=1e-4)
        assert ours.scores.sum() == pytest.approx(ours.wordpiece_scores[1:-1].sum(), abs=1e-5)


@pytest.mark.parametrize("reduction", ["l2", "l2_squared", "sum"])
def test_saliency_matches_captum(textcat_nlp, reduction):
    component, (doc,) = explain(textcat_nlp, "attr_saliency", [TEXT], reduction=reduction)
    label, ours = next(iter(doc._.attributions["saliency"].items()))
    view, batch, f = captum_setup(component, doc, label)
    with view.frozen():
        grad = CaptumSaliency(f).attribute(view.capture(batch), abs=False)[0].detach()
    expected = {"l2": grad.norm(dim=-1), "l2_squared": (grad ** 2).sum(-1), "sum": grad.sum(-1)}[reduction]
    numpy.testing.assert_allclose(ours.wordpiece_scores, expected.numpy(), atol=1e-5)
    if reduction != "sum":
        assert (ours.scores >= 0).all()


@pytest.mark.parametrize("var", [False, True])
def test_smoothgrad_matches_captum_noise_tunnel(textcat_nlp, var):
    """Same noise: our per-doc generator and Captum's global one start from the same seed."""
    n_samples = 8
    component, (doc,) = explain(textcat_nlp, "attr_smoothgrad", [TEXT], n_samples=n_samples, var=var,
                                seed=3, internal_batch_size=5)
    label, ours = next(iter(doc._.attributions["smoothgrad"].items()))
    view, batch, f = captum_setup(component, doc, label)
    with view.frozen():
        inputs = view.capture(batch)
        sigma = component.sigma(batch, inputs, 0)
        assert ours.extras["sigma"] == pytest.approx(sigma)
        torch.manual_seed(component.noise_seed(doc))
        expected = NoiseTunnel(InputXGradient(f)).attribute(
            inputs, nt_type="vargrad" if var else "smoothgrad", nt_samples=n_samples, stdevs=sigma)
    numpy.testing.assert_allclose(ours.wordpiece_scores, expected.sum(-1)[0].numpy(), atol=1e-4)


def test_smoothgrad_is_deterministic_and_batch_invariant(textcat_nlp, texts):
    _, batched = explain(textcat_nlp, "attr_smoothgrad", texts, n_samples=4)
    _, again = explain(textcat_nlp, "attr_smoothgrad", texts[:1], n_samples=4)
    first = next(iter(batched[0]._.attributions["smoothgrad"].values()))
    alone = next(iter(again[0]._.attributions["smoothgrad"].values()))
    numpy.testing.assert_allclose(first.wordpiece_scores, alone.wordpiece_scores, atol=1e-5)


def test_bad_settings_fail_clearly(textcat_nlp):
    from conftest import make_method

    with pytest.raises(ValueError, match="reduction.*'l1'"):
        make_method(textcat_nlp, "attr_saliency", reduction="l1")
    with pytest.raises(ValueError, match="base.*'lime'"):
        make_method(textcat_nlp, "attr_smoothgrad", base="lime")


def test_smoothgrad_noise_is_drawn_per_chunk(textcat_nlp, monkeypatch):
    """Memory is bounded by internal_batch_size: no draw is larger than one sample of one doc (not
    n_samples × the doc), and the result does not depend on the chunking."""
    text = " ".join(["the film was good and the plot was warm ."] * 3)
    drawn = []
    normal = torch.normal

    def recording_normal(*args, **kwargs):
        values = normal(*args, **kwargs)
        drawn.append(values.numel())
        return values

    _, (whole,) = explain(textcat_nlp, "attr_smoothgrad", [text], n_samples=6)
    monkeypatch.setattr(torch, "normal", recording_normal)
    component, (chunked,) = explain(textcat_nlp, "attr_smoothgrad", [text], n_samples=6, internal_batch_size=2)
    batch = component.view.encode([chunked])
    one_sample = batch.rows[0] * int(batch.attention_mask.sum(1).max()) * component.view.hf_model.config.hidden_size
    assert len(drawn) == 6 and max(drawn) == one_sample
    (label, expected), = whole._.attributions["smoothgrad"].items()
    numpy.testing.assert_allclose(chunked._.attributions["smoothgrad"][label].wordpiece_scores,
                                  expected.wordpiece_scores, atol=1e-5)
