"""Integrated gradients: agreement with Captum, completeness, batch invariance, quadrature."""

import numpy
import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import LayerIntegratedGradients

from spacy_attrib.methods import integrated
from spacy_attrib.methods.integrated import baseline_inputs, quadrature_points

from conftest import explain, make_method

TEXT = "A warm, witty and wise film."


def captum_function(view, batch, label_index):
    """f(values at the attribution site) for Captum: each row of a (steps, T, hidden) input is one copy
    of the single doc of `batch`."""
    def f(inputs):
        return view.forward(batch, inputs, doc_index=[0] * inputs.shape[0]).scores[:, 0, label_index]
    return f


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid"])
def test_matches_captum_integrated_gradients(textcat_nlp, rule):
    component, (doc,) = explain(textcat_nlp, "attr_integrated_gradients", [TEXT], n_steps=50, quadrature=rule)
    label, ours = next(iter(doc._.attributions["integrated_gradients"].items()))
    view = component.view
    batch = view.encode([doc])
    with view.frozen():
        inputs = view.capture(batch)
        baseline = baseline_inputs(view, batch, inputs, "pad")
        f = captum_function(view, batch, view.labels.index(label))
        if rule == "gausslegendre":
            expected = CaptumIG(f).attribute(inputs, baselines=baseline, n_steps=50, method="gausslegendre")
        else:
            # Captum's trapezoid weights sum to 1 - 1/n; ours are the trapezoid rule proper, so compare
            # with Captum's IG over the same points and weights via its `step_sizes` hook-free route:
            # the quadrature is checked separately below, here the gradients along the path.
            alphas, weights = quadrature_points(50, rule)
            grads = torch.zeros_like(inputs)
            for alpha, weight in zip(alphas, weights):
                point = (baseline + alpha * (inputs - baseline)).requires_grad_(True)
                grads += weight * torch.autograd.grad(f(point).sum(), point)[0]
            expected = (inputs - baseline) * grads
    numpy.testing.assert_allclose(ours.wordpiece_scores, expected.sum(-1)[0].numpy(), atol=1e-4)
    assert len(ours.scores) == len(doc)


def test_default_site_matches_captum_layer_call(textcat_nlp):
    """The default site is the embedding layer's output: Captum's LayerIntegratedGradients(f, embeddings)
    with a [CLS] [PAD]… [SEP] reference gives the same scores."""
    component, (doc,) = explain(textcat_nlp, "attr_integrated_gradients", [TEXT], n_steps=50)
    label, ours = next(iter(doc._.attributions["integrated_gradients"].items()))
    view = component.view
    batch = view.encode([doc])
    label_index = view.labels.index(label)

    def f_ids(ids):
        return view.forward(batch, input_ids=ids, doc_index=[0] * ids.shape[0]).scores[:, 0, label_index]

    reference = batch.input_ids.clone()
    reference[0, 1:-1] = view.token_id("pad")
    with view.frozen():
        expected, delta = LayerIntegratedGradients(f_ids, view.hf_model.embeddings).attribute(
            batch.input_ids, baselines=reference, n_steps=50, return_convergence_delta=True)
    numpy.testing.assert_allclose(ours.wordpiece_scores, expected.sum(-1)[0].numpy(), atol=1e-4)
    assert ours.delta == pytest.approx(float(delta), abs=1e-4)


def test_word_embedding_site_differs_from_embedding_output(textcat_nlp):
    _, (at_output,) = explain(textcat_nlp, "attr_integrated_gradients", [TEXT])
    _, (at_words,) = explain(textcat_nlp, "attr_integrated_gradients", [TEXT], attribute_at="word_embeddings")
    a = next(iter(at_output._.attributions["integrated_gradients"].values()))
    b = next(iter(at_words._.attributions["integrated_gradients"].values()))
    assert not numpy.allclose(a.wordpiece_scores, b.wordpiece_scores, atol=1e-6)
    assert abs(b.delta) <= 0.01 * abs(b.output - b.extras["baseline_output"])


@pytest.mark.parametrize("baseline", ["pad", "mask", "unk", "zero"])
def test_completeness(textcat_nlp, texts, baseline):
    """Σ IG = f(x) − f(x′) within the default tolerance (1 % of |f(x) − f(x′)|, or of the 0.1 output floor
    for an output that barely moves), checked against independent forward passes."""
    component, docs = explain(textcat_nlp, "attr_integrated_gradients", texts[:4], baseline=baseline,
                              labels="all")
    view = component.view
    for doc in docs:
        batch = view.encode([doc])
        with view.frozen(), torch.no_grad():
            inputs = view.capture(batch)
            f_x = view.forward(batch, inputs).scores[0, 0]
            f_baseline = view.forward(batch, baseline_inputs(view, batch, inputs, baseline)).scores[0, 0]
        for label, attribution in doc._.attributions["integrated_gradients"].items():
            difference = float(f_x[view.labels.index(label)] - f_baseline[view.labels.index(label)])
            total = float(attribution.wordpiece_scores.sum())
            assert attribution.delta == pytest.approx(total - difference, abs=1e-6)
            assert attribution.extras["converged"]
            assert abs(attribution.delta) <= 0.01 * max(abs(difference), 0.1) + 1e-6


def test_batch_invariance(textcat_nlp, texts):
    """A doc's attributions are the same alone and in a padded batch of 8, whatever the chunking."""
    _, batched = explain(textcat_nlp, "attr_integrated_gradients", texts, batch_size=8,
                         internal_batch_size=70, labels="all")
    assert len(batched) == 8
    for text, doc in zip(texts, batched):
        _, (alone,) = explain(textcat_nlp, "attr_integrated_gradients", [text], labels="all")
        for label, attribution in alone._.attributions["integrated_gradients"].items():
            other = doc._.attributions["integrated_gradients"][label]
            numpy.testing.assert_allclose(other.wordpiece_scores, attribution.wordpiece_scores, atol=1e-5)
            numpy.testing.assert_allclose(other.scores, attribution.scores, atol=1e-5)


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid"])
def test_quadrature_integrates_polynomials(rule):
    alphas, weights = quadrature_points(9, rule)
    assert weights.sum() == pytest.approx(1.0)
    if rule == "gausslegendre":  # exact up to degree 2n - 1
        assert (weights * alphas ** 17).sum() == pytest.approx(1 / 18)
    else:  # exact for linear functions, O(h²) otherwise
        assert (weights * alphas).sum() == pytest.approx(0.5)
        assert (weights * alphas ** 2).sum() == pytest.approx(1 / 3, abs=1 / (6 * 8 ** 2) + 1e-12)


def test_bad_settings_fail_clearly(textcat_nlp):
    with pytest.raises(ValueError, match="quadrature.*'simpson'"):
        make_method(textcat_nlp, "attr_integrated_gradients", quadrature="simpson")
    with pytest.raises(ValueError, match="n_steps.*'many'"):
        make_method(textcat_nlp, "attr_integrated_gradients", n_steps="many")
    with pytest.raises(ValueError, match="baseline.*'random'"):
        make_method(textcat_nlp, "attr_integrated_gradients", baseline="random")


SATURATING = ["a good film", "a warm film", "the actor was dull", "the plot was dull and slow ."]


def ig_results(nlp, texts, **config):
    _, docs = explain(nlp, "attr_integrated_gradients", texts, **config)
    return [next(iter(doc._.attributions["integrated_gradients"].values())) for doc in docs]


def test_auto_steps_certify_completeness_with_fewer_evaluations(saturated_nlp):
    """On a near-certain classifier, 50 uniform steps leave gaps of several percent; `auto` meets the
    tolerance with fewer gradient evaluations, and uniform steps at auto's count mostly do not (they spread
    the points evenly where auto puts them where the output changes)."""
    auto = ig_results(saturated_nlp, SATURATING, n_steps="auto", tolerance=0.01)
    uniform_50 = ig_results(saturated_nlp, SATURATING, n_steps=50)
    assert max(u.extras["relative_delta"] for u in uniform_50) > 0.03
    missed_at_auto_count = []
    for text, a, u in zip(SATURATING, auto, uniform_50):
        assert a.extras["converged"]
        assert a.extras["relative_delta"] <= a.extras["gap_bound"] + 1e-6 <= 0.01 + 1e-6
        if u.extras["relative_delta"] > 0.01:
            assert a.extras["n_steps"] < 50
            (same_count,) = ig_results(saturated_nlp, [text], n_steps=a.extras["n_steps"])
            missed_at_auto_count.append(same_count.extras["relative_delta"] > 0.01)
    assert len(missed_at_auto_count) >= 2 and sum(missed_at_auto_count) > len(missed_at_auto_count) / 2


def test_auto_steps_converge_to_the_uniform_result(saturated_nlp):
    auto = ig_results(saturated_nlp, SATURATING, n_steps="auto", tolerance=1e-3)
    reference = ig_results(saturated_nlp, SATURATING, n_steps=1000)
    for a, r in zip(auto, reference):
        assert r.extras["relative_delta"] < 1e-4
        scale = abs(r.output - r.extras["baseline_output"])
        numpy.testing.assert_allclose(a.wordpiece_scores, r.wordpiece_scores, atol=1e-3 * scale)
        assert a.extras["n_steps"] <= 72  # 66 on the steepest of these paths (6-point segments)


def test_auto_steps_respect_max_steps(saturated_nlp):
    (result,) = ig_results(saturated_nlp, ["a good film"], n_steps="auto", tolerance=1e-6, max_steps=16,
                           initial_segments=2)
    assert result.extras["n_steps"] <= 16
    assert not result.extras["converged"]
    assert result.extras["relative_delta"] <= result.extras["gap_bound"] + 1e-6


def test_bfloat16_gap_is_measured_against_float32_outputs(saturated_nlp):
    """Under bfloat16 the path runs in bfloat16 but f(x) and f(x′) come from float32 passes: the output,
    the baseline output and the reported gap are those of the float32 model."""
    exact = ig_results(saturated_nlp, SATURATING, n_steps=20)
    half = ig_results(saturated_nlp, SATURATING, n_steps=20, dtype="bfloat16")
    for e, h in zip(exact, half):
        assert h.output == e.output
        assert h.extras["baseline_output"] == e.extras["baseline_output"]
        total = float(numpy.sum(h.wordpiece_scores, dtype="float64"))
        assert h.extras["delta"] == pytest.approx(total - (e.output - e.extras["baseline_output"]), abs=1e-5)


def test_bfloat16_auto_steps_go_to_float32_where_bfloat16_noise_exceeds_the_tolerance(saturated_nlp):
    """A tolerance below bfloat16's noise: f at the path's ends differs from float32 by more than half the
    tolerance, so the doc is integrated in float32 at once (no bfloat16 gradient spent) and certified there."""
    exact = ig_results(saturated_nlp, SATURATING, n_steps="auto", tolerance=1e-4, max_steps=512)
    half = ig_results(saturated_nlp, SATURATING, n_steps="auto", tolerance=1e-4, max_steps=512, dtype="bfloat16")
    fell_back = [(e, h) for e, h in zip(exact, half) if "fallback" in h.extras]
    assert fell_back
    for e, h in fell_back:
        assert h.extras["fallback"] == "float32" and h.extras["bfloat16_steps"] == 0
        assert h.extras["bfloat16_error"] > 0.5e-4
        assert h.extras["converged"] and h.extras["relative_delta"] <= 1e-4 + 1e-7
        numpy.testing.assert_allclose(h.wordpiece_scores, e.wordpiece_scores, atol=1e-6)
    for h in half:
        assert h.extras["converged"] and h.extras["relative_delta"] <= 1e-4 + 1e-7


def test_bfloat16_auto_steps_stop_refining_when_the_gap_bound_stalls(saturated_nlp, monkeypatch):
    """Without the endpoint check, the second guard: a doc whose gap bound stops shrinking as its segments
    split goes to float32 well before `max_steps`; none is left uncertified."""
    monkeypatch.setattr(integrated, "NOISE_SHARE", float("inf"))
    half = ig_results(saturated_nlp, SATURATING, n_steps="auto", tolerance=1e-4, max_steps=512, dtype="bfloat16")
    assert any("fallback" in h.extras for h in half)
    for h in half:
        assert h.extras["converged"] and h.extras["relative_delta"] <= 1e-4 + 1e-7
        assert h.extras.get("bfloat16_steps", 0) <= 256


def test_bfloat16_auto_steps_certify_a_reachable_tolerance_in_bfloat16(saturated_nlp):
    """Where bfloat16 noise is below the tolerance, no fallback: certified in bfloat16, measured in float32."""
    for result in ig_results(saturated_nlp, SATURATING, n_steps="auto", tolerance=0.05, dtype="bfloat16"):
        assert "fallback" not in result.extras
        assert result.extras["converged"] and result.extras["relative_delta"] <= 0.05
