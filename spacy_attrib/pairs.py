"""Sentence pairs (RTE, MNLI, …) as one Doc.

spaCy has no pair input, so a pair is one Doc whose text is ``a [SEP] b``: the two texts joined by the
transformer tokenizer's separator token, which is one spaCy token of the Doc. The transformer tokenizes
the Doc's text as one sequence, and its tokenizer keeps the separator as the special token, so the model
sees ``[CLS] a [SEP] b [SEP]``. `token_type_ids` are those of a single sequence (all 0 for BERT): that is
what the pipeline computes, in training and in prediction, and what the view explains; a pipeline
trained on such docs learns the pair with segment embedding A on both sides. The same docs go into a
DocBin for ``spacy train`` (give `separator` where no transformer is loaded yet).

Attributions of a pair carry ``segments``: ``a``, ``separator`` and ``b``, each with its tokens and
scores; the three partition the Doc's tokens, so their scores add up to the whole.
"""

from typing import List, Optional, Tuple

from spacy.language import Language
from spacy.tokens import Doc

PAIR_KEY = "spacy_attrib.pair"  # in doc.user_data: the index of the separator token


def make_pair(nlp: Language, a: str, b: str, *, separator: Optional[str] = None) -> Doc:
    """One Doc for the pair (`a`, `b`): `nlp`'s tokens of each, joined by `separator` (default: the
    separator token of the pipeline's transformer tokenizer, ``[SEP]`` for BERT, ``</s>`` for RoBERTa)."""
    if separator is None:
        from .view import find_transformer

        separator = find_transformer(nlp)[1].model.tokenizer.sep_token
        if not separator:
            raise ValueError("The transformer's tokenizer has no separator token: pass `separator`")
    doc_a, doc_b = nlp.make_doc(a.strip()), nlp.make_doc(b.strip())
    if not len(doc_a) or not len(doc_b):
        raise ValueError(f"Both sides of a pair need text, got {a!r} and {b!r}")
    words = [t.text for t in doc_a] + [separator] + [t.text for t in doc_b]
    spaces = [bool(t.whitespace_) for t in doc_a[:-1]] + [True, True] + [bool(t.whitespace_) for t in doc_b]
    doc = Doc(nlp.vocab, words=words, spaces=spaces)
    doc.user_data[PAIR_KEY] = len(doc_a)
    return doc


def pair_segments(doc: Doc) -> List[Tuple[str, int, int]]:
    """(name, start, end) token ranges of a pair's sides and separator; empty for a doc that is no pair."""
    if PAIR_KEY not in doc.user_data:
        return []
    sep = int(doc.user_data[PAIR_KEY])
    return [("a", 0, sep), ("separator", sep, sep + 1), ("b", sep + 1, len(doc))]
