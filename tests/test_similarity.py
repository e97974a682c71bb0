"""Sentence embeddings (`sentence_embedding`) and integrated Jacobians (Moeller et al. 2023)."""

import csv
from pathlib import Path
from typing import List

import numpy
import pytest
import spacy
import torch

import spacy_attrib.embedding  # noqa: F401  (registers the sentence_embedding factory)
from conftest import transformer_config

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


def test_minilm_similarity_matches_plain_transformers_on_stsb():
    """all-MiniLM-L6-v2 on ten STS-B dev pairs (loads in under a second, so not marked slow)."""
    from spacy_attrib.training import minilm_dir

    path = str(minilm_dir())
    nlp = embedding_pipeline(path)
    pairs = stsb_pairs()
    assert len(pairs) == 10
    texts = [t for pair in pairs for t in pair]
    vectors = plain_mean_pool(path, texts)
    docs = list(nlp.pipe(texts))
    for i in range(len(pairs)):
        a, b = docs[2 * i], docs[2 * i + 1]
        assert a.similarity(b) == pytest.approx(cosine(vectors[2 * i], vectors[2 * i + 1]), abs=1e-5)
