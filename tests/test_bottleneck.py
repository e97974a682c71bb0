"""attr_information_bottleneck (IBA, Jiang et al. 2020): the bottleneck's maths (capacity = the KL closed
form, identity at λ → 1), the statistics (known answer, streamed, saved with the pipeline), the planted
key ranked first, batch independence, no side effects, every head kind, and `spacy train` fitting it."""

import numpy
import pytest
import spacy
import torch

from spacy_attrib import iter_attributions
from spacy_attrib.methods.bottleneck import bottleneck, capacity, default_layer
from spacy_attrib.methods.bottleneck.statistics import REFERENCE_STD

from conftest import examples_of, explain, initialized, make_method, planted_key_texts, toy_texts, weights_snapshot

FAST = {"steps": 3, "n_samples": 3}


def fitted(nlp, texts, **config):
    return initialized(nlp, "attr_information_bottleneck", texts, **config)


def scores_of(component, docs):
    component.set_annotations(docs, component.predict(docs))
    return {(d, a.label, a.token, a.span): a for d, doc in enumerate(docs) for a in iter_attributions(doc)}


# -- the maths -------------------------------------------------------------------------------------
def test_capacity_is_the_kl_divergence():
    generator = torch.Generator().manual_seed(0)
    # float64: for large α, 1 − λ in float32 loses digits in the reference, not in our log-sigmoid form
    alpha = torch.randn((3, 7, 16), generator=generator, dtype=torch.float64) * 4
    r = torch.randn((3, 7, 16), generator=generator, dtype=torch.float64) * 3
    lam = torch.sigmoid(alpha)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(lam * r, 1 - lam),
                                                 torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(capacity(r, alpha), expected, atol=1e-6, rtol=0)
    assert (capacity(r, alpha) >= 0).all()


def test_noise_is_clamped_for_sampling_only():
    """log (1 − λ)² is clamped to ±10 when sampling: at α = 20 the noise's std is e⁻⁵ (in σ units)."""
    r, noise = torch.zeros(1, 1, 4), torch.ones(1, 1, 4)
    values = bottleneck(r, torch.full_like(r, 20.0), torch.tensor(0.0), torch.tensor(2.0), noise)
    torch.testing.assert_close(values, torch.full_like(r, 2 * numpy.exp(-5.0)))


@pytest.mark.parametrize("stats", ["dataset", "reference_code"])
def test_identity_at_full_mask(textcat_nlp, texts, stats):
    """α = +20 and no noise: Z = R, and the head's output is the unmodified pipeline's."""
    component = fitted(textcat_nlp, texts, stats=stats)
    view = component.view
    docs = list(textcat_nlp.pipe(texts))
    batch = view.encode(docs)
    with view.frozen():
        hidden = view.capture(batch)
        mean, std = component.normalisation(batch)
        values = bottleneck((hidden - mean) / std, torch.full_like(hidden, 20.0), mean, std, None)
        with torch.no_grad():
            output = view.forward(batch, values)
    torch.testing.assert_close(values, hidden, atol=1e-5, rtol=1e-5)
    for d, doc in enumerate(docs):
        probabilities = torch.exp(output.scores[d, 0])
        expected = torch.tensor([doc.cats[label] for label in view.labels])
        torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=0)


def test_default_layer_scales_the_official_choice():
    assert [default_layer(n) for n in (12, 6, 2, 1, 24)] == [9, 5, 2, 1, 18]


# -- statistics ------------------------------------------------------------------------------------
def test_dataset_statistics_are_the_pooled_moments(textcat_nlp, texts):
    """Mean and std per hidden unit over every real position, streamed in batches of 2 = computed at once."""
    component = fitted(textcat_nlp, texts, batch_size=2, layer=1)
    view = component.view
    batch = view.encode([textcat_nlp.make_doc(text) for text in texts])
    real = view.capture(batch)[batch.attention_mask.bool()].double().numpy()
    statistics = component.statistics
    assert statistics.layer == 1 and statistics.n_positions == len(real)
    numpy.testing.assert_allclose(statistics.mean, real.mean(0), rtol=1e-5, atol=1e-6)
    numpy.testing.assert_allclose(statistics.std, real.std(0), rtol=1e-4)
    bounded = fitted(textcat_nlp, texts, max_examples=3, layer=1).statistics
    assert bounded.n_positions == sum(int(m.sum()) for m in view.encode(
        [textcat_nlp.make_doc(t) for t in texts[:3]]).attention_mask)


def test_reference_code_statistics_are_the_layer_input(textcat_nlp, texts):
    """The official quirk: μ = the input of the bottleneck's layer (hidden_states[k − 1]), σ = sqrt(1e-5)."""
    component = make_method(textcat_nlp, "attr_information_bottleneck", stats="reference_code", layer=2)
    view = component.view
    batch = view.encode([textcat_nlp.make_doc(text) for text in texts[:2]])
    mean, std = component.normalisation(batch)
    hf = view.hf_model
    with view.frozen(), torch.no_grad():
        states = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    token_type_ids=batch.token_type_ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(mean, states[1])
    assert float(std) == pytest.approx(REFERENCE_STD) and REFERENCE_STD == pytest.approx(3.1623e-3, rel=1e-4)


def test_clear_error_before_initialization(textcat_nlp, texts):
    component = make_method(textcat_nlp, "attr_information_bottleneck")
    with pytest.raises(ValueError, match=r"no statistics yet.*initialize\(get_examples\)"):
        component.predict([textcat_nlp.make_doc(texts[0])])
    with pytest.raises(ValueError, match="needs|examples"):
        component.initialize(None, nlp=textcat_nlp)


def test_statistics_survive_serialization(textcat_nlp, texts, tmp_path):
    component = fitted(textcat_nlp, texts, **FAST)
    restored = make_method(textcat_nlp, "attr_information_bottleneck").from_bytes(component.to_bytes())
    component.to_disk(tmp_path / "iba")
    from_disk = make_method(textcat_nlp, "attr_information_bottleneck").from_disk(tmp_path / "iba")
    for other in (restored, from_disk):
        assert other.cfg == component.cfg
        for name in ("mean", "std"):
            original = getattr(component.statistics, name)
            copy = getattr(other.statistics, name)
            assert copy.dtype == original.dtype and copy.tobytes() == original.tobytes()
        assert other.statistics.n_positions == component.statistics.n_positions


def test_saved_pipeline_gives_identical_scores(textcat_dir, texts, tmp_path):
    nlp = spacy.load(textcat_dir)
    component = nlp.add_pipe("attr_information_bottleneck", config=FAST)
    component.initialize(lambda: examples_of(nlp, texts), nlp=nlp)
    docs = list(nlp.pipe(texts[:3]))
    nlp.to_disk(tmp_path / "pipeline")
    reloaded = spacy.load(tmp_path / "pipeline")
    again = list(reloaded.pipe(texts[:3]))
    for doc, other in zip(docs, again):
        ours, theirs = doc._.attributions["information_bottleneck"], other._.attributions["information_bottleneck"]
        assert list(ours) == list(theirs)
        for label in ours:
            numpy.testing.assert_array_equal(ours[label].wordpiece_scores, theirs[label].wordpiece_scores)


# -- the method ------------------------------------------------------------------------------------
def planted_key_first(planted_key_nlp, **config) -> float:
    """The share of 40 held-out planted-key docs whose key IBA ranks first (statistics fitted on 96 others)."""
    train = planted_key_texts(96, seed=1)
    component = fitted(planted_key_nlp, [text for text, _, _ in train], **config)
    data = planted_key_texts(40, seed=7)
    docs = list(planted_key_nlp.pipe(text for text, _, _ in data))
    results = component.predict(docs)
    return float(numpy.mean([int(numpy.argmax(result[0].scores)) == key for result, (_, _, key) in zip(results, data)]))


def test_planted_key_ranks_first_on_the_embedding_output(planted_key_nlp):
    """One key token decides the label: with the bottleneck on the embedding output (layer 0), where each
    position holds only its own token, IBA ranks the key first in at least 80 % of docs (measured: all 40),
    the paper's other defaults unchanged."""
    assert planted_key_first(planted_key_nlp, layer=0) >= 0.8


# An open finding, kept visible: at the default layer (2 of 2, the official 9 of 12 scaled) the key ranks first
# in 0.075 (dataset) and 0.50 (reference_code) of 40 docs (chance ≈ 0.14); at layer 1, 0.10 and 0.025. Also
# measured: β 1 … 100, 30 steps at lr 0.3, layer 1: at most 0.65. After an attention layer the key's
# information is at other positions too, and spaCy's heads mean-pool every position, so the cross-entropy
# asks to keep many of them; the paper's heads read [CLS]. On the embedding output (above) it is found.
@pytest.mark.xfail(strict=True, reason="IBA at the default layer ranks the planted key first in 0.075 (dataset) / "
                   "0.50 (reference_code) of docs on a mean-pooled textcat; see the comment above")
@pytest.mark.parametrize("stats", ["dataset", "reference_code"])
def test_planted_key_ranks_first_at_the_default_layer(planted_key_nlp, stats):
    assert planted_key_first(planted_key_nlp, stats=stats) >= 0.8


def test_batch_independent_and_deterministic(textcat_nlp, texts):
    component = fitted(textcat_nlp, texts, labels="all", internal_batch_size=7, **FAST)
    together = scores_of(component, list(textcat_nlp.pipe(texts)))
    again = scores_of(component, list(textcat_nlp.pipe(texts)))
    alone = scores_of(component, list(textcat_nlp.pipe(texts[3:4])))
    assert len(together) == 2 * len(texts)
    for key, attribution in together.items():
        numpy.testing.assert_array_equal(attribution.wordpiece_scores, again[key].wordpiece_scores)
    for (d, *target), attribution in alone.items():
        numpy.testing.assert_allclose(attribution.wordpiece_scores, together[(d + 3, *target)].wordpiece_scores,
                                      rtol=1e-4, atol=1e-4)


def test_scores_are_capacities_and_normalise_is_min_max(textcat_nlp, texts):
    raw = scores_of(fitted(textcat_nlp, texts, **FAST), list(textcat_nlp.pipe(texts[:2])))
    scaled = scores_of(fitted(textcat_nlp, texts, normalise=True, **FAST), list(textcat_nlp.pipe(texts[:2])))
    for key, attribution in raw.items():
        wordpieces = attribution.wordpiece_scores
        assert (wordpieces >= 0).all()
        assert attribution.scores.sum() <= wordpieces.sum() + 1e-3  # [CLS]/[SEP] belong to no token
        extras = attribution.extras
        assert extras["capacity"] == pytest.approx(wordpieces.sum(), rel=1e-5)
        assert (extras["capacity_min"], extras["capacity_max"]) == pytest.approx((wordpieces.min(), wordpieces.max()))
        other = scaled[key]
        assert other.wordpiece_scores.min() == pytest.approx(0.0) and other.wordpiece_scores.max() == pytest.approx(1.0)
        low, high = other.extras["capacity_min"], other.extras["capacity_max"]
        numpy.testing.assert_allclose(other.wordpiece_scores * (high - low) + low, wordpieces, rtol=1e-4)


def test_no_side_effects(textcat_nlp, texts):
    hf = textcat_nlp.get_pipe("transformer").model.transformer
    before = weights_snapshot(textcat_nlp)
    # Training through spacy-transformers leaves zeroed .grad tensors; attribution must add or change none.
    grads = [None if p.grad is None else p.grad.clone() for p in hf.parameters()]
    head = textcat_nlp.get_pipe("textcat").model
    thinc_grads = {(node.id, name) for node in head.walk() for name in node.grad_names}
    was_training = hf.training
    explain(textcat_nlp, "attr_information_bottleneck", texts[:3], stats="reference_code", **FAST)
    after = weights_snapshot(textcat_nlp)
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert (value == after[key]).all(), key
    for param, grad in zip(hf.parameters(), grads):
        assert (param.grad is None) if grad is None else torch.equal(param.grad, grad)
    assert {(node.id, name) for node in head.walk() for name in node.grad_names} == thinc_grads
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in hf.modules())
    assert hf.training == was_training


HEAD_TEXTS = {"tagger_nlp": ["it was fun", "the actor was awful"],
              "spancat_nlp": ["this movie is very good !", "that actor was awful but the story was great ."],
              "ner_nlp": ["we saw alex person there today", "kim company was here then"]}


@pytest.mark.parametrize("layer", ["auto", 0])
@pytest.mark.parametrize("fixture", sorted(HEAD_TEXTS))
def test_every_head_kind(request, fixture, layer):
    nlp = request.getfixturevalue(fixture)
    texts = HEAD_TEXTS[fixture]
    component = fitted(nlp, texts, steps=2, n_samples=2, layer=layer)  # the parser replays each entity: keep it short
    results = scores_of(component, list(nlp.pipe(texts)))
    alone = scores_of(component, list(nlp.pipe(texts[1:])))
    assert results and all(len(a.scores) == len(texts[d].split()) for (d, *_), a in results.items())
    assert all((a.wordpiece_scores >= 0).all() and a.extras["capacity"] > 0 for a in results.values())
    for (d, *target), attribution in alone.items():
        numpy.testing.assert_allclose(attribution.wordpiece_scores, results[(d + 1, *target)].wordpiece_scores,
                                      rtol=1e-4, atol=1e-4)


def test_bad_settings_fail_clearly(textcat_nlp):
    for config, message in [({"stats": "batch"}, "stats"), ({"output": "prob"}, "log_prob"),
                            ({"layer": -1}, "layer"), ({"layer": 0, "stats": "reference_code"}, "layer 0"),
                            ({"steps": 0}, "steps"), ({"n_samples": 0}, "n_samples"), ({"beta": -1.0}, "beta")]:
        with pytest.raises(ValueError, match=message):
            make_method(textcat_nlp, "attr_information_bottleneck", **config)
    with pytest.raises(ValueError, match=r"layer must be 'auto' or in 0\.\.2"):
        make_method(textcat_nlp, "attr_information_bottleneck", layer=3, stats="reference_code").view


# -- spacy train -----------------------------------------------------------------------------------
def test_spacy_train_fits_the_statistics(tiny_bert, tmp_path):
    """A config with the component disabled in training: the saved pipeline holds statistics fitted on the
    trained model from the training corpus, and explains after spacy.load."""
    from pathlib import Path

    from spacy.cli.train import train
    from spacy.tokens import DocBin

    from test_training import SST2

    blank = spacy.blank("en")
    docs = []
    for text, label in toy_texts(8, seed=0):
        doc = blank.make_doc(text)
        doc.cats = {"POS": float(label == "POS"), "NEG": float(label == "NEG")}
        docs.append(doc)
    DocBin(docs=docs).to_disk(tmp_path / "toy.spacy")
    config = spacy.util.load_config(SST2, overrides={"paths.transformer": str(tiny_bert),
                                                     "paths.train": str(tmp_path / "toy.spacy"),
                                                     "paths.dev": str(tmp_path / "toy.spacy"),
                                                     "training.max_steps": 2, "training.eval_frequency": 2})
    attribution = [name for name in config["nlp"]["pipeline"] if name.startswith("attr_")]
    for name in attribution:
        del config["components"][name]
    config["nlp"]["pipeline"] = ["transformer", "textcat", "iba"]
    config["nlp"]["disabled"] = ["iba"]
    config["components"]["iba"] = {"factory": "attr_information_bottleneck", "head": "textcat", **FAST}
    config.to_disk(tmp_path / "config.cfg")
    train(tmp_path / "config.cfg", tmp_path / "output")
    nlp = spacy.load(Path(tmp_path) / "output" / "model-last")
    component = nlp.get_pipe("iba")
    assert nlp.disabled == [] and component.statistics is not None
    refit = make_method(nlp, "attr_information_bottleneck", head="textcat")
    refit.initialize(lambda: examples_of(nlp, [doc.text for doc in docs]), nlp=nlp)
    assert component.statistics.n_positions == refit.statistics.n_positions
    numpy.testing.assert_allclose(component.statistics.mean, refit.statistics.mean, rtol=1e-5, atol=1e-6)
    doc = nlp("the movie was good .")
    assert list(doc._.attributions["information_bottleneck"]) == [max(doc.cats, key=doc.cats.get)]
