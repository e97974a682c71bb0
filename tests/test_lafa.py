"""LAFA: exactly the base without neighbours or at λ = 0, the indicator kernel's hand computation, neighbour
order, the index on disk, ner targets, and the model left as it was."""

import random

import numpy
import pytest
import spacy
import torch
from spacy.training import Example

from conftest import examples_of, explain, initialized, make_method, toy_texts, trigger_sentence, weights_snapshot

TEXT = "the film was good and the plot was good ."


def lafa(nlp, texts, **config):
    return initialized(nlp, "attr_lafa", texts, **config)


def run(component, nlp, texts):
    docs = list(nlp.pipe(texts))
    component.set_annotations(docs, component.predict(docs))
    return docs


def results(doc, key="lafa"):
    return doc._.attributions[key]


def reference_texts(n=24, seed=5):
    return [text for text, _ in toy_texts(n, seed)]


def test_lambda_zero_is_exactly_the_base(textcat_nlp, texts):
    component = lafa(textcat_nlp, reference_texts(), neighbour_weight=0.0, cutoff_quantile=1.0, labels="all")
    docs = run(component, textcat_nlp, texts)
    _, base_docs = explain(textcat_nlp, "attr_saliency", texts, reduction="l2_squared",
                           attribute_at="word_embeddings", labels="all")
    for doc, base_doc in zip(docs, base_docs):
        for label, ours in results(doc).items():
            assert ours.extras["neighbours"]  # neighbours are there, λ = 0 silences them
            numpy.testing.assert_array_equal(ours.wordpiece_scores,
                                             base_doc._.attributions["saliency"][label].wordpiece_scores)


def test_no_neighbours_is_exactly_the_base(textcat_nlp, texts):
    """same_label with a reference set that predicts only POS: a NEG target has no neighbour."""
    predicted = [(doc.text, max(doc.cats, key=doc.cats.get)) for doc in textcat_nlp.pipe(reference_texts(48))]
    positive = [text for text, label in predicted if label == "POS"]
    assert 5 <= len(positive) < len(predicted)
    component = lafa(textcat_nlp, positive, labels=["NEG", "POS"], cutoff_quantile=1.0, same_label=True)
    docs = run(component, textcat_nlp, texts)
    _, base_docs = explain(textcat_nlp, "attr_saliency", texts, reduction="l2_squared",
                           attribute_at="word_embeddings", labels=["NEG", "POS"])
    for doc, base_doc in zip(docs, base_docs):
        negative, base = results(doc)["NEG"], base_doc._.attributions["saliency"]["NEG"]
        assert negative.extras["neighbours"] == []
        numpy.testing.assert_array_equal(negative.wordpiece_scores, base.wordpiece_scores)
        positive_result = results(doc)["POS"]
        assert len(positive_result.extras["neighbours"]) == 10
        assert not numpy.array_equal(positive_result.wordpiece_scores,
                                     base_doc._.attributions["saliency"]["POS"].wordpiece_scores)


def hand_lafa(base_scores, pieces, weight):
    """M + λ E with one neighbour identical to the doc under the indicator kernel:
    E(w_t) = (1/T) Σ_{k: w_k = w_t} m_k."""
    pieces = numpy.asarray(pieces)
    neighbour_term = numpy.array([base_scores[pieces == piece].sum() for piece in pieces]) / len(pieces)
    return base_scores + weight * neighbour_term


def test_indicator_kernel_with_an_identical_neighbour_matches_the_hand_computation(textcat_nlp):
    far = "terrible"
    component = lafa(textcat_nlp, [far, TEXT], kernel="indicator", max_neighbours=1, cutoff_quantile=1.0,
                     same_label=False, neighbour_weight=0.5, labels="all")
    (doc,) = run(component, textcat_nlp, [TEXT])
    _, (base_doc,) = explain(textcat_nlp, "attr_saliency", [TEXT], reduction="l2_squared",
                             attribute_at="word_embeddings", labels="all")
    for label, ours in results(doc).items():
        base = base_doc._.attributions["saliency"][label]
        assert ours.extras["neighbours"] == [1]
        assert ours.wordpieces.count("good") == 2 and ours.wordpieces.count("the") == 2
        expected = hand_lafa(base.wordpiece_scores.astype("float64"), ours.wordpieces, 0.5)
        numpy.testing.assert_allclose(ours.wordpiece_scores, expected, rtol=1e-5, atol=1e-9)


def test_neighbour_order_does_not_matter(textcat_nlp, texts):
    references = reference_texts(32)
    forward = lafa(textcat_nlp, references, max_neighbours=4, cutoff_quantile=0.5, kernel="rbf")
    backward = lafa(textcat_nlp, references[::-1], max_neighbours=4, cutoff_quantile=0.5, kernel="rbf")
    assert forward.index.epsilon == pytest.approx(backward.index.epsilon, rel=1e-12)
    n = len(references)
    for a, b in zip(run(forward, textcat_nlp, texts), run(backward, textcat_nlp, texts)):
        for label, ours in results(a).items():
            other = results(b)[label]
            assert sorted(ours.extras["neighbours"]) == sorted(n - 1 - i for i in other.extras["neighbours"])
            numpy.testing.assert_allclose(ours.wordpiece_scores, other.wordpiece_scores, rtol=1e-5, atol=1e-9)


def test_index_survives_disk_and_bytes(textcat_nlp, texts, tmp_path):
    component = lafa(textcat_nlp, reference_texts(), cutoff_quantile=0.25, kernel="cosine")
    expected = run(component, textcat_nlp, texts)
    component.to_disk(tmp_path / "lafa")
    loaded = make_method(textcat_nlp, "attr_lafa").from_disk(tmp_path / "lafa")
    from_bytes = make_method(textcat_nlp, "attr_lafa").from_bytes(component.to_bytes())
    for restored in (loaded, from_bytes):
        assert restored.cfg == component.cfg
        assert restored.index.epsilon == component.index.epsilon
        numpy.testing.assert_array_equal(restored.index.encodings, component.index.encodings)
        for doc, again in zip(expected, run(restored, textcat_nlp, texts)):
            for label, ours in results(doc).items():
                numpy.testing.assert_array_equal(results(again)[label].wordpiece_scores, ours.wordpiece_scores)


def test_used_before_initialisation_says_what_to_run(textcat_nlp):
    component = make_method(textcat_nlp, "attr_lafa")
    with pytest.raises(ValueError, match=r"initialize\(get_examples\)"):
        component.predict([textcat_nlp(TEXT)])
    with pytest.raises(ValueError, match="training examples"):
        component.initialize(None, nlp=textcat_nlp)
    assert component.fits_state


def ner_texts(n, seed):
    rng = random.Random(seed)
    return [" ".join(trigger_sentence(rng, with_trigger=True)[0]) for _ in range(n)]


def test_ner_entities_aggregate_neighbours_of_the_same_label(ner_nlp):
    references = ner_texts(40, seed=11)
    component = lafa(ner_nlp, references, kernel="indicator", cutoff_quantile=1.0, max_neighbours=5)
    explained = ner_texts(6, seed=12)
    docs = run(component, ner_nlp, explained)
    _, base_docs = explain(ner_nlp, "attr_saliency", explained, reduction="l2_squared",
                           attribute_at="word_embeddings")
    n_entities = 0
    for doc, base_doc in zip(docs, base_docs):
        for entity, base_entity in zip(doc.ents, base_doc.ents):
            ours = next(iter(entity._.attributions["lafa"].values()))
            base = next(iter(base_entity._.attributions["saliency"].values()))
            neighbours = ours.extras["neighbours"]
            assert 1 <= len(neighbours) <= 5
            assert all(entity.label_ in component.index.maps[i] for i in neighbours)
            # The indicator kernel adds non-negative evidence, on every wordpiece some neighbour shares.
            difference = ours.wordpiece_scores - base.wordpiece_scores
            assert (difference >= 0).all() and (difference > 0).any()
            n_entities += 1
    assert n_entities >= 4


@pytest.mark.parametrize("base", ["smoothgrad", "integrated_gradients"])
def test_other_bases_are_squared_and_plugged_in(textcat_nlp, base):
    base_config = {"n_samples": 4} if base == "smoothgrad" else {"n_steps": 8}
    component = lafa(textcat_nlp, reference_texts(), base=base, base_config=base_config,
                     neighbour_weight=0.0, cutoff_quantile=1.0)
    (doc,) = run(component, textcat_nlp, [TEXT])
    factory = {"smoothgrad": "attr_smoothgrad", "integrated_gradients": "attr_integrated_gradients"}[base]
    extra = {"base": "saliency", "reduction": "l2_squared"} if base == "smoothgrad" else {}
    _, (base_doc,) = explain(textcat_nlp, factory, [TEXT], attribute_at="word_embeddings", **base_config, **extra)
    label, ours = next(iter(results(doc).items()))
    reference = base_doc._.attributions[base][label].wordpiece_scores
    expected = reference ** 2 if base == "integrated_gradients" else reference
    numpy.testing.assert_allclose(ours.wordpiece_scores, expected, rtol=1e-5)
    assert (ours.wordpiece_scores >= 0).all()


def test_batched_equals_single_and_the_model_is_untouched(textcat_dir, texts):
    textcat_nlp = spacy.load(textcat_dir)  # loaded: no .grad tensors yet (training leaves zeroed ones)
    before = weights_snapshot(textcat_nlp)
    component = lafa(textcat_nlp, reference_texts(), batch_size=3, cutoff_quantile=0.5)
    batched = run(component, textcat_nlp, texts)
    alone = run(component, textcat_nlp, texts[:1])
    for label, ours in results(batched[0]).items():
        numpy.testing.assert_allclose(results(alone[0])[label].wordpiece_scores, ours.wordpiece_scores,
                                      rtol=1e-5, atol=1e-9)
    after = weights_snapshot(textcat_nlp)
    assert before.keys() == after.keys()
    for key, value in before.items():
        same = torch.equal(value, after[key]) if isinstance(value, torch.Tensor) else numpy.array_equal(value, after[key])
        assert same, key
    hf = textcat_nlp.get_pipe("transformer").model.transformer
    assert all(p.grad is None for p in hf.parameters())


def test_index_built_from_docs_directly_matches_get_examples(textcat_nlp):
    references = reference_texts(12)
    component = lafa(textcat_nlp, references)
    direct = component.build_index([textcat_nlp.make_doc(t) for t in references])
    numpy.testing.assert_allclose(direct.encodings, component.index.encodings, rtol=1e-6)
    assert direct.predicted == component.index.predicted
    assert all(set(maps) == {"POS", "NEG"} for maps in component.index.maps)


def test_bad_settings_fail_clearly(textcat_nlp):
    with pytest.raises(ValueError, match="kernel"):
        make_method(textcat_nlp, "attr_lafa", kernel="gaussian")
    with pytest.raises(ValueError, match="cutoff_quantile"):
        make_method(textcat_nlp, "attr_lafa", cutoff_quantile=1.5)
    with pytest.raises(ValueError, match="neighbour_weight"):
        make_method(textcat_nlp, "attr_lafa", neighbour_weight=-1.0)
    with pytest.raises(ValueError, match="base_config may not set.*reduction"):
        make_method(textcat_nlp, "attr_lafa", base_config={"reduction": "l2"})
    component = make_method(textcat_nlp, "attr_lafa", layer=7)
    with pytest.raises(ValueError, match="layer must be"):
        component.initialize(lambda: examples_of(textcat_nlp, [TEXT]), nlp=textcat_nlp)


def test_nlp_initialize_indexes_and_the_saved_pipeline_keeps_the_index(textcat_dir, tmp_path):
    """spaCy's own initialize hands the component its examples; spacy.load restores the index."""
    nlp = spacy.load(textcat_dir)
    nlp.add_pipe("attr_lafa", config={"cutoff_quantile": 0.25})
    examples = [Example.from_dict(nlp.make_doc(text), {"cats": {"POS": float(label == "POS"),
                                                                 "NEG": float(label == "NEG")}})
                for text, label in toy_texts(16, seed=3)]
    nlp.initialize(lambda: examples)
    component = nlp.get_pipe("attr_lafa")
    assert len(component.index) == 16 and component.index.layer == 1  # ⌊5·2/12⌋ → at least 1
    expected = nlp(TEXT)
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    again = loaded(TEXT)
    numpy.testing.assert_array_equal(loaded.get_pipe("attr_lafa").index.encodings, component.index.encodings)
    for label, ours in results(expected).items():
        assert results(again)[label].extras["neighbours"] == ours.extras["neighbours"]
        numpy.testing.assert_allclose(results(again)[label].wordpiece_scores, ours.wordpiece_scores, rtol=1e-6)
