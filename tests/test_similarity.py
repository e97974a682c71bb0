"""Sentence embeddings (`sentence_embedding`) and integrated Jacobians (Moeller et al. 2023)."""

import csv
import re
from pathlib import Path
from typing import List

import numpy
import pytest
import spacy
import torch

from conftest import transformer_config
from spacy_attrib import Interaction
from spacy_attrib.methods.similarity import d_loop_projections, explain_similarities, explain_similarity
from spacy_attrib.render import POSITIVE_RGB, interaction_figure, render_interaction
from spacy_attrib.view.embedding import EmbeddingView

DATA = Path(__file__).parent / "data"


def plain_mean_pool(model_path: str, texts: List[str]) -> numpy.ndarray:
    """sentence-transformers' mean pooling with plain `transformers`: Σ mask·h / Σ mask."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


def cosine(a: numpy.ndarray, b: numpy.ndarray) -> float:
    return float(a @ b / (numpy.linalg.norm(a) * numpy.linalg.norm(b)))


def embedding_pipeline(model_path, **transformer):
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config=transformer_config(model_path, **transformer))
    nlp.add_pipe("sentence_embedding")
    nlp.initialize()
    return nlp


@pytest.fixture(scope="module")
def embedding_nlp(tiny_bert):
    return embedding_pipeline(tiny_bert)


def stsb_pairs():
    with open(DATA / "stsb" / "glue" / "dev-pairs.tsv", encoding="utf8") as file:
        return [(row["sentence1"], row["sentence2"]) for row in csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE)]


# -- sentence_embedding --------------------------------------------------------------------------------
def test_doc_vector_is_the_plain_mean_pool(embedding_nlp, tiny_bert, texts):
    docs = list(embedding_nlp.pipe(texts))
    expected = plain_mean_pool(str(tiny_bert), texts)
    for doc, vector in zip(docs, expected):
        numpy.testing.assert_allclose(doc.vector, vector, atol=1e-5)
    for a, b in zip(docs, docs[1:]):
        assert a.similarity(b) == pytest.approx(cosine(a.vector, b.vector), abs=1e-6)
    assert docs[0].similarity(docs[1]) == pytest.approx(cosine(expected[0], expected[1]), abs=1e-5)


def test_long_doc_pools_every_window(tiny_bert, texts):
    """Windows of 8 wordpieces, stride 6: the mean over the real wordpieces of all windows."""
    nlp = embedding_pipeline(tiny_bert, window=8, stride=6)
    doc = nlp(texts[6])
    data = doc._.trf_data
    hidden, mask = numpy.asarray(data.model_output.last_hidden_state), numpy.asarray(data.wordpieces.attention_mask)
    assert hidden.shape[0] > 2
    expected = (hidden * mask[..., None]).sum((0, 1)) / mask.sum()
    numpy.testing.assert_allclose(doc.vector, expected, rtol=1e-6)


def test_sentence_embedding_saved_and_loaded(embedding_nlp, tmp_path, texts):
    embedding_nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.pipe_names == ["transformer", "sentence_embedding"]
    a, b = loaded(texts[0]), loaded(texts[1])
    assert a.similarity(b) == pytest.approx(embedding_nlp(texts[0]).similarity(embedding_nlp(texts[1])), abs=1e-6)


def test_sentence_embedding_rejects_other_pooling():
    nlp = spacy.blank("en")
    with pytest.raises(Exception, match="pooling"):
        nlp.add_pipe("sentence_embedding", config={"pooling": "cls"})


def test_minilm_similarity_matches_plain_transformers_on_stsb(minilm):
    """all-MiniLM-L6-v2 on ten STS-B dev pairs (loads in under a second, so not marked slow)."""
    path = str(minilm)
    nlp = embedding_pipeline(path)
    pairs = stsb_pairs()
    assert len(pairs) == 10
    texts = [t for pair in pairs for t in pair]
    vectors = plain_mean_pool(path, texts)
    docs = list(nlp.pipe(texts))
    for i in range(len(pairs)):
        a, b = docs[2 * i], docs[2 * i + 1]
        assert a.similarity(b) == pytest.approx(cosine(vectors[2 * i], vectors[2 * i + 1]), abs=1e-5)


# -- integrated Jacobians ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair_docs(embedding_nlp):
    return [embedding_nlp(t) for t in ("the movie was very good .", "a great film !", "this plot is dull and slow",
                                       "a really brilliant , quite wonderful movie . the actor was good .")]


def test_embedding_view_is_doc_vector(embedding_nlp, pair_docs):
    for layer in (0, 1, 2):
        view = EmbeddingView(embedding_nlp, layer)
        batch = view.encode(pair_docs)
        with torch.no_grad():
            vectors = view.embed(batch, view.capture(batch))
        for doc, vector in zip(pair_docs, vectors):
            numpy.testing.assert_allclose(vector.numpy(), doc.vector, atol=1e-5)


@pytest.mark.parametrize("similarity", ["cos", "dot"])
def test_jvp_route_equals_d_loop(embedding_nlp, pair_docs, similarity):
    a, b = pair_docs[0], pair_docs[3]
    result = explain_similarity(embedding_nlp, a, b, layer=1, n_steps=3, similarity=similarity, internal_batch_size=7)
    view = EmbeddingView(embedding_nlp, 1)
    batch = view.encode([a, b])
    inputs, baseline = view.capture(batch), view.capture(batch, view.pad_reference_ids(batch))
    p_a, p_b = (d_loop_projections(view, batch, inputs, baseline, 3, d) for d in (0, 1))
    expected = (p_a.T @ p_b).detach().numpy()
    if similarity == "cos":
        expected = expected / (numpy.linalg.norm(a.vector) * numpy.linalg.norm(b.vector))
    assert result.wordpiece_matrix.shape == (8, 15)
    numpy.testing.assert_allclose(result.wordpiece_matrix, expected, atol=1e-5)
    assert numpy.abs(expected).max() > 1e-2


@pytest.mark.parametrize("similarity", ["cos", "dot"])
def test_completeness_error_shrinks_with_steps(embedding_nlp, pair_docs, similarity):
    """Measured (cos): 7.9e-3, 3.3e-4, 6.4e-7 at 1, 2, 4 points; float noise (~1e-8) from 8 on."""
    a, b = pair_docs[0], pair_docs[3]
    errors = [explain_similarity(embedding_nlp, a, b, layer=1, n_steps=n, similarity=similarity).error for n in (1, 2, 4)]
    assert errors[0] > 20 * errors[1] > 20 * 20 * errors[2]
    result = explain_similarity(embedding_nlp, a, b, layer=1, n_steps=8, similarity=similarity)
    assert result.error < 1e-6 * max(1.0, abs(result.extras["target"]))
    assert result.wordpiece_matrix.sum() == pytest.approx(result.extras["target"], abs=1e-6 * max(1.0, abs(result.extras["target"])))


def test_exact_at_one_step_where_linear_above_the_layer(embedding_nlp, pair_docs):
    """At the last hidden state e is the mean pool, linear: one point is exact."""
    a, b = pair_docs[0], pair_docs[3]
    result = explain_similarity(embedding_nlp, a, b, layer=2, n_steps=1, similarity="dot")
    assert result.error < 1e-6 * abs(result.extras["target"])
    assert result.wordpiece_matrix.sum() == pytest.approx(result.extras["target"], rel=1e-6)


def test_reference_terms_and_similarity(embedding_nlp, pair_docs):
    a, b = pair_docs[1], pair_docs[2]
    result = explain_similarity(embedding_nlp, a, b, n_steps=4)
    assert result.extras["layer"] == 1  # "auto" on the 2-layer model
    assert result.output == pytest.approx(a.similarity(b), abs=1e-6)
    terms = result.extras["reference_terms"]
    assert terms["s(a,b)"] == pytest.approx(float(a.vector @ b.vector), rel=1e-5)
    norms = float(numpy.linalg.norm(a.vector) * numpy.linalg.norm(b.vector))
    combined = (terms["s(a,b)"] - terms["s(a,r_b)"] - terms["s(r_a,b)"] + terms["s(r_a,r_b)"]) / norms
    assert result.extras["target"] == pytest.approx(combined, rel=1e-4)
    # Tokens: [CLS]/[SEP] rows and columns dropped, the rest summed; per-token scores are row/column sums.
    assert result.matrix.shape == (len(a), len(b))
    numpy.testing.assert_allclose(result.matrix, result.wordpiece_matrix[1:-1, 1:-1], atol=1e-7)  # one piece per token
    numpy.testing.assert_allclose(result.scores_a, result.matrix.sum(1))
    assert result.tokens_a == tuple(t.text for t in a) and result.wordpieces_b[0] == "[CLS]"


def test_transpose_symmetry(embedding_nlp, pair_docs):
    a, b = pair_docs[0], pair_docs[2]
    ab = explain_similarity(embedding_nlp, a, b, n_steps=4)
    ba = explain_similarity(embedding_nlp, b, a, n_steps=4)
    numpy.testing.assert_allclose(ab.matrix, ba.matrix.T, atol=1e-7)
    numpy.testing.assert_allclose(ab.wordpiece_matrix, ba.wordpiece_matrix.T, atol=1e-7)
    numpy.testing.assert_allclose(ab.scores_a, ba.scores_b, atol=1e-7)
    assert ab.transposed().tokens_a == ba.tokens_a


def test_batched_pairs_equal_single_pairs(embedding_nlp, pair_docs):
    """Pairs that share docs, of different lengths, in one call with a small row budget: as one by one."""
    pairs = [(pair_docs[0], pair_docs[1]), (pair_docs[3], pair_docs[0]), (pair_docs[2], pair_docs[3])]
    together = explain_similarities(embedding_nlp, pairs, n_steps=4, internal_batch_size=5)
    for (a, b), result in zip(pairs, together):
        alone = explain_similarity(embedding_nlp, a, b, n_steps=4)
        numpy.testing.assert_allclose(result.wordpiece_matrix, alone.wordpiece_matrix, atol=1e-6)
        assert result.error == pytest.approx(alone.error, abs=1e-6)


def test_auto_steps_meet_the_tolerance(embedding_nlp, pair_docs):
    """8 points already meet 1e-3 here (error 3e-9); a tolerance of 1e-12 doubles up to max_steps."""
    a, b = pair_docs[0], pair_docs[3]
    result = explain_similarity(embedding_nlp, a, b, n_steps="auto", tolerance=1e-3)
    assert result.extras["n_steps"] == 8 and result.error <= 1e-3 * abs(result.extras["target"])
    capped = explain_similarity(embedding_nlp, a, b, n_steps="auto", tolerance=1e-12, max_steps=32)
    assert capped.extras["n_steps"] == 32


def test_long_docs_use_every_window(tiny_bert, texts):
    nlp = embedding_pipeline(tiny_bert, window=8, stride=6)
    a, b = nlp(texts[6]), nlp(texts[3])
    result = explain_similarity(nlp, a, b, layer=1, n_steps=8, internal_batch_size=16)
    assert result.output == pytest.approx(a.similarity(b), abs=1e-6)
    assert result.error < 1e-6
    assert len(result.wordpieces_a) == int(numpy.asarray(a._.trf_data.wordpieces.attention_mask).sum())


def test_model_untouched(embedding_nlp, pair_docs):
    hf = embedding_nlp.get_pipe("transformer").model.transformer
    hf.train()
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    explain_similarity(embedding_nlp, pair_docs[0], pair_docs[1], n_steps=2)
    assert hf.training
    assert all(torch.equal(before[k], v) for k, v in hf.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in hf.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in hf.modules())
    hf.eval()


@pytest.mark.parametrize("settings, message", [({"similarity": "l2"}, "similarity"), ({"reference": "mask"}, "reference"),
                                               ({"layer": 3}, "layer"), ({"n_steps": 0}, "n_steps"),
                                               ({"n_steps": "Auto"}, "n_steps"),
                                               ({"n_steps": "auto", "tolerance": 0.0}, "tolerance"),
                                               ({"internal_batch_size": 0}, "internal_batch_size")])
def test_bad_settings(embedding_nlp, pair_docs, settings, message):
    with pytest.raises(ValueError, match=message):
        explain_similarity(embedding_nlp, pair_docs[0], pair_docs[1], **settings)


def test_minilm_integrated_jacobians_on_stsb(minilm):
    """all-MiniLM-L6-v2, the first STS-B dev pair, the default layer (5 of 6) and 50 points: completeness
    error 1.7e-7 against the four-term combination 3.40 (s(a, b) = 0.993: an off-the-shelf model's
    reference terms do not vanish); the shared content words pair with themselves (the paper's figures)."""
    nlp = embedding_pipeline(str(minilm))
    a, b = (nlp(text) for text in stsb_pairs()[0])
    result = explain_similarity(nlp, a, b)
    assert result.extras["layer"] == 5 and result.extras["n_steps"] == 50
    assert result.output == pytest.approx(a.similarity(b), abs=1e-6)
    assert result.error < 1e-5 * abs(result.extras["target"])
    for word in ("hard", "hat", "dancing"):
        i, j = result.tokens_a.index(word), result.tokens_b.index(word)
        assert int(numpy.argmax(result.matrix[i])) == j


# -- rendering -----------------------------------------------------------------------------------------
def toy_interaction():
    return Interaction("integrated_jacobians", numpy.array([[1.0, -0.5], [0.0, 0.25]]), ("<b>", "x&y"), ("a", "b"),
                       numpy.zeros((4, 4)), ["[CLS]", "<b>", "x&y", "[SEP]"], ["[CLS]", "a", "b", "[SEP]"], [[1], [2]],
                       [[1], [2]], 0.5, {"error": 1e-3})


def test_heatmap_html_is_escaped_and_coloured():
    markup = render_interaction(toy_interaction(), jupyter=False)
    assert "<b>" not in markup.split("</style>", 1)[1] and "&lt;b&gt;" in markup and "x&amp;y" in markup
    cells = re.findall(r'<td style="background: (rgb\([^)]*\))" title="([^"]*)"', markup)
    assert [float(t) for _, t in cells] == [1.0, -0.5, 0.0, 0.25]
    assert cells[0][0] == "rgb({}, {}, {})".format(*POSITIVE_RGB)  # the largest |cell| at full hue
    assert cells[2][0] == "rgb(255, 255, 255)"
    # Row sums (token scores of a) and column sums (of b) in the margins.
    assert re.findall(r'class="attrib-sum" title="([^"]*)"', markup) == ["0.5000", "0.2500", "1.0000", "-0.2500"]
    assert "error 1.00e-03" in markup
    assert render_interaction(toy_interaction(), wordpieces=True, page=True, jupyter=False).startswith("<!DOCTYPE html>")


def test_heatmap_png(embedding_nlp, pair_docs, tmp_path):
    result = explain_similarity(embedding_nlp, pair_docs[0], pair_docs[1], n_steps=4)
    figure = interaction_figure(result)
    figure.savefig(tmp_path / "pair.png")
    data = (tmp_path / "pair.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(result.tokens_a)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(result.tokens_b)
    numpy.testing.assert_allclose(ax.images[0].get_array(), result.matrix)
    assert ax.images[0].get_clim() == pytest.approx((-abs(result.matrix).max(), abs(result.matrix).max()))


def test_interaction_round_trip(embedding_nlp, pair_docs):
    import srsly

    result = explain_similarity(embedding_nlp, pair_docs[0], pair_docs[1], n_steps=4)
    loaded = Interaction.from_dict(srsly.msgpack_loads(srsly.msgpack_dumps(result.to_dict())))
    numpy.testing.assert_array_equal(loaded.matrix, result.matrix)
    numpy.testing.assert_array_equal(loaded.wordpiece_matrix, result.wordpiece_matrix)
    assert (loaded.tokens_a, loaded.wordpieces_b, loaded.alignment_a) == (result.tokens_a, result.wordpieces_b, result.alignment_a)
    assert loaded.extras == result.extras and loaded.output == result.output
