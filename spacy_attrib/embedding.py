"""Sentence embeddings in spaCy: the ``sentence_embedding`` component.

    nlp.add_pipe("transformer", config=...)        # e.g. all-MiniLM-L6-v2
    nlp.add_pipe("sentence_embedding")
    doc_a, doc_b = nlp("A man is playing a guitar."), nlp("A man plays the guitar.")
    doc_a.similarity(doc_b)                        # the model's cosine similarity

The component sets ``doc.vector`` to the mean of the transformer's last hidden states over the doc's real
wordpieces (``doc._.trf_data``: the attention mask excludes padding, [CLS] and [SEP] count), which is
sentence-transformers' mean pooling, so that ``doc.similarity`` is the model's cosine similarity. A doc
split into several windows is pooled over the real wordpieces of all of them (`spacy_attrib.view.embedding`).
No head is needed.

The vector is kept in ``doc.user_data`` (it survives `DocBin` and ``Doc.to_bytes``) and read by
``doc.user_hooks["vector"]``; ``doc.user_hooks["similarity"]`` is the cosine of the two vectors. User hooks
are not serialised: after a round trip, `set_vector_hooks(doc)` puts them back.
"""

from typing import Iterable, Iterator, Literal

import numpy
import torch
from spacy.language import Language
from spacy.tokens import Doc
from thinc.api import to_numpy

from .view.embedding import mean_pool

VECTOR_KEY = "spacy_attrib.vector"
Pooling = Literal["mean"]


def doc_vector(doc: Doc) -> numpy.ndarray:
    return doc.user_data[VECTOR_KEY]


def cosine_similarity(doc: Doc, other) -> float:
    """The cosine of the two docs' sentence vectors (0 where either is zero)."""
    a, b = doc_vector(doc), numpy.asarray(other.vector, dtype="float32")
    norms = float(numpy.linalg.norm(a) * numpy.linalg.norm(b))
    return float(a @ b) / norms if norms else 0.0


def set_vector_hooks(doc: Doc) -> Doc:
    """Make ``doc.vector`` and ``doc.similarity`` read the sentence vector stored in the doc's user data."""
    doc.user_hooks["vector"] = doc_vector
    doc.user_hooks["similarity"] = cosine_similarity
    return doc


class SentenceEmbedding:
    """Sets each doc's vector to its mean-pooled transformer output (see the module docstring)."""

    def __init__(self, name: str, pooling: str):
        if pooling != "mean":
            raise ValueError(f"pooling must be 'mean', got {pooling!r}")
        self.name = name
        self.pooling = pooling

    def __call__(self, doc: Doc) -> Doc:
        data = doc._.trf_data
        hidden = to_numpy(data.model_output.last_hidden_state)
        mask = numpy.asarray(data.wordpieces.attention_mask)
        if not hidden.size:
            vector = numpy.zeros(hidden.shape[-1] if hidden.ndim == 3 else 0, dtype="float32")
        else:
            owners = torch.zeros(hidden.shape[0], dtype=torch.long)
            vector = mean_pool(torch.as_tensor(hidden, dtype=torch.float32), torch.as_tensor(mask), owners, 1)[0].numpy()
        doc.user_data[VECTOR_KEY] = vector
        return set_vector_hooks(doc)

    def pipe(self, docs: Iterable[Doc], batch_size: int = 128) -> Iterator[Doc]:
        for doc in docs:
            yield self(doc)


@Language.factory("sentence_embedding", default_config={"pooling": "mean"}, assigns=["doc.user_data", "doc.user_hooks"],
                  requires=["doc._.trf_data"])
def make_sentence_embedding(nlp: Language, name: str, pooling: Pooling) -> SentenceEmbedding:
    """``sentence_embedding``: doc.vector as the mean-pooled transformer output (pooling: ``mean``)."""
    return SentenceEmbedding(name, pooling)
