"""The result type and its persistence: DocBin, multiprocessing, dict round trip."""

import numpy
import pytest
from spacy.tokens import DocBin

from spacy_attrib import Attribution

from conftest import explain


def assert_same(a: Attribution, b: Attribution) -> None:
    assert (a.method, a.label, a.token, a.wordpieces, a.alignment) == (b.method, b.label, b.token,
                                                                        b.wordpieces, b.alignment)
    numpy.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    numpy.testing.assert_allclose(a.wordpiece_scores, b.wordpiece_scores, atol=1e-6)
    assert a.output == pytest.approx(b.output)
    assert a.extras == pytest.approx(b.extras, abs=1e-5)


def test_result_shape(textcat_nlp, texts):
    _, docs = explain(textcat_nlp, "attr_integrated_gradients", texts, n_steps=8)
    for doc in docs:
        (label, attribution), = doc._.attributions["integrated_gradients"].items()
        assert label == max(doc.cats, key=doc.cats.get)
        assert attribution.scores.shape == (len(doc),)
        assert attribution.scores.dtype == numpy.float32
        assert len(attribution.wordpieces) == len(attribution.wordpiece_scores)
        assert attribution.wordpieces[0] == "[CLS]" and attribution.wordpieces[-1] == "[SEP]"
        assert len(attribution.alignment) == len(doc)
        assert attribution.output == pytest.approx(numpy.log(doc.cats[label]), abs=1e-5)
        # under "sum", token scores add up to the scores of the wordpieces aligned to tokens
        aligned = sorted({i for pieces in attribution.alignment for i in pieces})
        assert attribution.scores.sum() == pytest.approx(attribution.wordpiece_scores[aligned].sum(), abs=1e-5)
        assert Attribution.from_dict(attribution.to_dict()) is not attribution
        assert_same(Attribution.from_dict(attribution.to_dict()), attribution)


def test_docbin_round_trip(textcat_nlp, tagger_nlp, texts):
    for nlp in (textcat_nlp, tagger_nlp):
        _, docs = explain(nlp, "attr_gradient_x_input", texts[:3])
        restored = list(DocBin(docs=docs, store_user_data=True).from_bytes(
            DocBin(docs=docs, store_user_data=True).to_bytes()).get_docs(nlp.vocab))
        for doc, back in zip(docs, restored):
            assert doc._.attributions.keys() == back._.attributions.keys()
            for key, by_label in doc._.attributions.items():
                for label, attribution in by_label.items():
                    assert_same(attribution, back._.attributions[key][label])
            for token, token_back in zip(doc, back):
                for key, by_label in token._.attributions.items():
                    for label, attribution in by_label.items():
                        assert_same(attribution, token_back._.attributions[key][label])


def test_multiprocessing_round_trip(textcat_dir, texts):
    import spacy

    nlp = spacy.load(textcat_dir)
    nlp.add_pipe("attr_integrated_gradients", config={"n_steps": 8})
    serial = list(nlp.pipe(texts[:4]))
    parallel = list(nlp.pipe(texts[:4], n_process=2, batch_size=2))
    for a, b in zip(serial, parallel):
        assert a._.attributions.keys() == b._.attributions.keys() == {"integrated_gradients"}
        for label, attribution in a._.attributions["integrated_gradients"].items():
            assert_same(attribution, b._.attributions["integrated_gradients"][label])


def test_tagger_results_are_on_tokens(tagger_nlp):
    _, (doc,) = explain(tagger_nlp, "attr_saliency", ["the plot was dull"])
    assert doc._.attributions == {"saliency": {}}
    for token in doc:
        (label, attribution), = token._.attributions["saliency"].items()
        assert label == token.tag_
        assert attribution.token == token.i
        assert attribution.scores.shape == (len(doc),)
