"""`attr_diffmask` (`spacy_attrib.methods.masks.diffmask`): trained on the planted-key textcat, it keeps the key
where the prediction needs it and drops the other tokens; training leaves the explained model bit-identical;
with eps huge every gate closes; λ ascends and is clipped; the validity score; to_disk and spacy.load."""

import pickle
from typing import Dict, List

import numpy
import pytest
import spacy
import torch
from spacy.training import Example
from thinc.api import Adam

from conftest import planted_key_texts, weights_snapshot
from spacy_attrib import iter_attributions
from spacy_attrib.methods.masks.gates import HardConcrete

STEPS = 300
# The tiny model learns in a few hundred steps at 3e-3 (the official 3e-4 takes thousands of steps).
LEARN_RATE = 3e-3


def batches(nlp, n_docs: int = 64, size: int = 16, seed: int = 2) -> List[List[Example]]:
    docs = [nlp.make_doc(text) for text, _, _ in planted_key_texts(n_docs, seed=seed)]
    examples = [Example(doc, doc) for doc in docs]
    return [examples[i:i + size] for i in range(0, len(examples), size)]


def trained(nlp, steps: int, learn_rate: float = LEARN_RATE, **config):
    """A diffmask component of `nlp` (not added to it), trained `steps` steps over fixed batches."""
    component = nlp.create_pipe("attr_diffmask", config=config)
    component.initialize(lambda: batches(nlp)[0], nlp=nlp)
    optimizer = Adam(learn_rate)
    data = batches(nlp)
    for step in range(steps):
        component.update(data[step % len(data)], sgd=optimizer)
    return component


@pytest.fixture(scope="module")
def planted(planted_key_nlp) -> Dict:
    before = weights_snapshot(planted_key_nlp)
    hf = planted_key_nlp.get_pipe("transformer").model.transformer
    # The fixture's own training leaves zeroed .grad tensors (thinc zeroes them after each step): kept as they are.
    grads = [None if p.grad is None else p.grad.clone() for p in hf.parameters()]
    thinc_grads = {(node.id, name) for node in planted_key_nlp.get_pipe("textcat").model.walk() for name in node.grad_names}
    component = trained(planted_key_nlp, STEPS)
    return {"component": component, "before": before, "grads": grads, "thinc_grads": thinc_grads}


def keep_of_tokens(component, texts: List[str]) -> List[numpy.ndarray]:
    """Per doc, the keep matrix per token (tokens × states), wordpieces averaged."""
    docs = list(component.nlp.pipe(texts))
    component.set_annotations(docs, component.predict(docs))
    result = []
    for doc in docs:
        attribution = next(a for a in iter_attributions(doc) if a.method == "diffmask")
        keep = numpy.asarray(attribution.extras["keep"])
        result.append(numpy.stack([keep[pieces].mean(0) for pieces in attribution.alignment]))
    return result


def baseline_label(component) -> str:
    """What the head predicts with every word embedding replaced by the learned placeholder."""
    view, probe = component.view, component.probe
    batch = view.encode([component.nlp.make_doc("the film was a plot")])
    placeholder = probe.placeholder[0].detach().expand_as(view.states(batch)[0])
    with torch.no_grad():
        logits = view.forward(batch, placeholder, site="word_embeddings").logits
    return view.labels[int(logits[0, 0].argmax())]


def test_the_probe_keeps_the_key_where_the_prediction_needs_it_and_drops_the_rest(planted):
    """At the word-embedding gate (depth 0) and the embedding output (depth 1): the key of every doc whose
    label is not what the placeholder alone gives keeps > 0.9 (the key of the other label is rightly
    dropped: the placeholder already gives its prediction), and ≥ 90 % of the other tokens fall below 0.1."""
    component = planted["component"]
    test = planted_key_texts(16, seed=3)
    needed = [(text, at) for text, label, at in test if label != baseline_label(component)]
    assert len(needed) == 8
    keep = keep_of_tokens(component, [text for text, _, _ in test])
    for (text, label, at), matrix in zip(test, keep):
        if label != baseline_label(component):
            assert (matrix[at, :2] > 0.9).all(), (text, matrix[at])
    others = numpy.concatenate([numpy.delete(matrix[:, :2], at, axis=0) for (_, _, at), matrix in zip(test, keep)])
    assert (others < 0.1).mean() >= 0.9


def test_training_leaves_the_explained_model_bit_identical(planted, planted_key_nlp):
    after = weights_snapshot(planted_key_nlp)
    assert planted["before"].keys() == after.keys()
    for key, value in planted["before"].items():
        same = torch.equal(value, after[key]) if isinstance(value, torch.Tensor) else numpy.array_equal(value, after[key])
        assert same, key
    hf = planted_key_nlp.get_pipe("transformer").model.transformer
    for param, grad in zip(hf.parameters(), planted["grads"]):
        assert (param.grad is None) if grad is None else torch.equal(param.grad, grad)
    textcat = planted_key_nlp.get_pipe("textcat").model
    assert {(node.id, name) for node in textcat.walk() for name in node.grad_names} == planted["thinc_grads"]
    assert float(planted["component"].probe.running_steps.sum()) == STEPS


def test_the_readout_is_a_keep_matrix_per_wordpiece_and_layers_kept_its_row_sum(planted, planted_key_nlp):
    component = planted["component"]
    docs = list(planted_key_nlp.pipe(["the good film was a plot", "bad"]))
    component.set_annotations(docs, component.predict(docs))
    for doc in docs:
        (attribution,) = [a for a in iter_attributions(doc) if a.method == "diffmask"]
        keep = numpy.asarray(attribution.extras["keep"])
        assert keep.shape == (len(attribution.wordpieces), 4)
        assert attribution.extras["states"] == ["word_embeddings", "embeddings", "layer_1", "layer_2"]
        assert ((keep >= 0) & (keep <= 1)).all() and (numpy.diff(keep, axis=1) <= 1e-7).all()  # a product of gates
        numpy.testing.assert_allclose(attribution.wordpiece_scores, keep.sum(1), rtol=1e-6)


def test_with_eps_huge_every_gate_closes(planted_key_nlp):
    component = trained(planted_key_nlp, 150, learn_rate=2e-2, eps=1e6)
    keep = keep_of_tokens(component, [text for text, _, _ in planted_key_texts(8, seed=3)])
    assert max(float(matrix.max()) for matrix in keep) < 0.1
    assert float(component.probe.lagrange.max()) == 0.0


def test_the_multiplier_ascends_on_the_constraint_and_is_clipped(planted_key_nlp):
    """λ's RMSprop ascent: up where KL > ε, down where KL < ε, by lr / sqrt(1 − α) = 3 on the first step; only
    the drawn depths move; clipped to [0, 200]."""
    component = planted_key_nlp.create_pipe("attr_diffmask")
    component.initialize(nlp=planted_key_nlp)
    probe = component.probe
    component._pending = torch.tensor([0.5, -0.5, 0.0, 0.0])
    component._drawn = torch.tensor([True, True, False, False])
    component.after_step()
    torch.testing.assert_close(probe.lagrange, torch.tensor([4.0, 0.0, 1.0, 1.0]))
    for _ in range(1000):  # RMSprop's steps shrink to lr = 0.3 as its mean square catches up
        component._pending = torch.tensor([10.0, 0.0, 0.0, 0.0])
        component._drawn = torch.tensor([True, False, False, False])
        component.after_step()
    assert float(probe.lagrange[0]) == 200.0


def test_the_score_is_the_official_validity(planted):
    component = planted["component"]
    docs = [component.nlp(text) for text, _, _ in planted_key_texts(8, seed=4)]
    examples = [Example(doc, doc) for doc in docs]
    scores = component.score(examples)
    assert 0 <= scores["diffmask_l0"] <= 1 and scores["diffmask_kl"] >= 0 and 0 <= scores["diffmask_agreement"] <= 1
    assert scores == component.score(examples)  # deterministic
    component.update_settings({"eps_valid": 1e9, "acc_valid": 0.0})
    assert component.score(examples)["diffmask_score"] == pytest.approx(1 - scores["diffmask_l0"])
    component.update_settings({"eps_valid": 0.0})
    assert component.score(examples)["diffmask_score"] == 0.0
    component.update_settings({"eps_valid": 0.8, "acc_valid": 0.75})


def test_before_initialize_is_a_clear_error(planted_key_nlp):
    component = planted_key_nlp.create_pipe("attr_diffmask")
    with pytest.raises(ValueError, match=r"no probe yet: train it with spacy train .*initialize\(get_examples\)"):
        component(planted_key_nlp("the good film"))


def test_survives_to_disk_and_spacy_load(planted_key_nlp, tmp_path):
    nlp = pickle.loads(pickle.dumps(planted_key_nlp))
    component = nlp.add_pipe("attr_diffmask", config={"depth": 0})
    component.initialize(nlp=nlp)
    optimizer = Adam(LEARN_RATE)
    for batch in batches(nlp)[:3]:
        component.update(batch, sgd=optimizer)
    texts = ["the good film was a plot", "it is bad"]
    expected = list(nlp.pipe(texts))
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    again = list(loaded.pipe(texts))
    for doc, other in zip(expected, again):
        (a,) = [x for x in iter_attributions(doc) if x.method == "diffmask"]
        (b,) = [x for x in iter_attributions(other) if x.method == "diffmask"]
        numpy.testing.assert_allclose(b.scores, a.scores, rtol=1e-6)
        assert b.extras == a.extras
    torch.testing.assert_close(loaded.get_pipe("attr_diffmask").probe.lagrange, component.probe.lagrange)
    assert loaded.get_pipe("attr_diffmask").cfg["depth"] == 0


def test_hidden_gates_mask_each_state_alone(planted_key_nlp):
    """gate = "hidden": one gate and learned placeholder per state; a pass at depth ℓ masks state ℓ only; the
    readout's columns are each state's own keep probability (no product)."""
    component = trained(planted_key_nlp, 8, gate="hidden")
    probe = component.probe
    assert probe.placeholder.shape == (4, 32) and [probe.masked_state(d) for d in range(4)] == [0, 1, 2, 3]
    assert not torch.equal(probe.placeholder[0], probe.placeholder[1]) and probe.placeholder.requires_grad
    batch = component.view.encode([planted_key_nlp.make_doc("the good film")])
    states = component.view.states(batch)
    log_keep = HardConcrete(probe.logits(states)).log_expected_l0()
    torch.testing.assert_close(probe.keep(states), log_keep.exp())
    assert float(probe.running_steps.sum()) == 8
