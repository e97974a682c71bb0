"""Sentence pairs as one Doc: the separator, the two sides of every result, the function the pipeline
computes, and pairs trained with `spacy train`."""

import numpy
import pytest
import spacy
from spacy.tokens import DocBin

from spacy_attrib import make_pair
from spacy_attrib.view import DifferentiableView

from conftest import NEGATIVE, POSITIVE, explain, quickstart_config, spacy_train

PAIRS = [("the film was good", "the plot was dull ."), ("a warm , witty movie", "it was really fun !"),
         ("unboring storyer", "terrible")]


def test_a_pair_is_one_doc_joined_by_the_separator(textcat_nlp):
    doc = make_pair(textcat_nlp, "the film was good ", " the plot was dull .")
    assert doc.text == "the film was good [SEP] the plot was dull ."
    assert [t.text for t in doc][4] == "[SEP]"
    assert make_pair(textcat_nlp, "a", "b", separator="</s>").text == "a </s> b"
    with pytest.raises(ValueError, match="Both sides of a pair need text"):
        make_pair(textcat_nlp, "a film", "  ")


def test_the_view_explains_the_function_the_pipeline_computes(textcat_nlp):
    """The pipeline tokenizes a pair as one sequence: [CLS] a [SEP] b [SEP], token types all 0; the view
    encodes it the same way, so its outputs are the pipeline's."""
    docs = [textcat_nlp(make_pair(textcat_nlp, a, b)) for a, b in PAIRS]
    view = DifferentiableView(textcat_nlp, output="prob")
    batch = view.encode(docs)
    for d, doc in enumerate(docs):
        wordpieces = doc._.trf_data.wordpieces
        assert wordpieces.strings[0].count("[SEP]") == 2
        rows = slice(batch.row_starts[d], batch.row_starts[d] + batch.rows[d])
        length = wordpieces.input_ids.shape[1]
        numpy.testing.assert_array_equal(batch.input_ids[rows, :length].numpy(), wordpieces.input_ids)
        numpy.testing.assert_array_equal(batch.token_type_ids[rows, :length].numpy(), wordpieces.token_type_ids)
        assert not wordpieces.token_type_ids.any()
    import torch

    with view.frozen(), torch.no_grad():
        scores = view.forward(batch).scores[:, 0]
    for doc, row in zip(docs, scores):
        numpy.testing.assert_allclose(row.numpy(), [doc.cats[label] for label in view.labels], atol=1e-5)


@pytest.mark.parametrize("factory", ["attr_integrated_gradients", "attr_gradient_x_input"])
def test_results_carry_both_sides_summing_to_the_whole(textcat_nlp, factory):
    key = factory[len("attr_"):]
    _, docs = explain(textcat_nlp, factory, [make_pair(textcat_nlp, a, b) for a, b in PAIRS], labels="all")
    for doc, (a, b) in zip(docs, PAIRS):
        for attribution in doc._.attributions[key].values():
            segments = attribution.segments
            assert list(segments) == ["a", "separator", "b"]
            assert segments["a"].tokens == tuple(t.text for t in textcat_nlp.make_doc(a))
            assert segments["b"].tokens == tuple(t.text for t in textcat_nlp.make_doc(b))
            assert segments["separator"].tokens == ("[SEP]",)
            total = sum(float(s.scores.sum()) for s in segments.values())
            assert total == pytest.approx(float(attribution.scores.sum()), abs=1e-6)
            if factory == "attr_integrated_gradients":
                # the default baseline keeps special tokens, so the separator's embedding does not move
                assert float(segments["separator"].scores[0]) == 0.0
    single = explain(textcat_nlp, factory, ["the film was good"])[1][0]
    assert all(not a.segments for a in single._.attributions[key].values())


def entailment_like(a: str, b: str) -> str:
    """A toy pair label: whether both sides have the same sentiment."""
    def sentiment(text):
        return "POS" if any(word in POSITIVE for word in text.split()) else "NEG"
    return "SAME" if sentiment(a) == sentiment(b) else "DIFFERENT"


def test_pairs_train_with_spacy_train_and_are_explained(tiny_bert, tmp_path):
    blank = spacy.blank("en")
    rng = numpy.random.default_rng(0)
    train = []
    for _ in range(40):
        a = f"the film was {rng.choice(POSITIVE + NEGATIVE)}"
        b = f"the plot is {rng.choice(POSITIVE + NEGATIVE)} ."
        doc = make_pair(blank, a, b, separator="[SEP]")
        label = entailment_like(a, b)
        doc.cats = {"SAME": float(label == "SAME"), "DIFFERENT": float(label == "DIFFERENT")}
        train.append(doc)
    DocBin(docs=train, store_user_data=True).to_disk(tmp_path / "train.spacy")
    nlp = spacy_train(quickstart_config("textcat", "efficiency", tiny_bert, tmp_path / "train.spacy", steps=20),
                      tmp_path)
    nlp.add_pipe("attr_integrated_gradients")
    doc = nlp(make_pair(nlp, "the film was good", "the plot is dull ."))
    (label, attribution), = doc._.attributions["integrated_gradients"].items()
    assert label in ("SAME", "DIFFERENT") and attribution.extras["converged"]
    assert set(attribution.segments) == {"a", "separator", "b"}
    restored, = DocBin(docs=[doc], store_user_data=True).from_bytes(
        DocBin(docs=[doc], store_user_data=True).to_bytes()).get_docs(nlp.vocab)
    again = restored._.attributions["integrated_gradients"][label].segments
    numpy.testing.assert_array_equal(again["b"].scores, attribution.segments["b"].scores)
