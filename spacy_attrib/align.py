"""From wordpiece scores to spaCy-token scores.

The transformer's alignment maps each spaCy token to the wordpiece positions it covers in the doc's rows
(row-major, padded width). A token in two overlapping windows of a long doc covers positions in both, so
its score combines both windows' wordpieces, as spaCy pools both windows' vectors for it.

- ``sum`` (default): the token's share of the wordpiece scores. A wordpiece aligned to k tokens gives each
  1/k of its score, so token scores add up to the scores of the aligned wordpieces (completeness carries
  over from wordpieces to tokens); special tokens ([CLS], [SEP]) align to no token.
- ``mean``: the mean of the token's wordpiece scores.
- ``max_abs``: the score of largest magnitude, sign kept.

A token with no wordpiece (a whitespace token, say) gets 0.
"""

from dataclasses import dataclass
from typing import List

import numpy
from thinc.types import Ragged

AGGREGATIONS = ("sum", "mean", "max_abs")


@dataclass
class WordpieceLayout:
    """The real (non-padding) wordpieces of one doc and the token → wordpiece alignment over them."""

    positions: numpy.ndarray  # flat positions in the doc's padded rows of the real wordpieces
    strings: List[str]
    alignment: List[List[int]]  # per token, indices into `positions`

    @classmethod
    def from_rows(cls, strings: List[List[str]], attention_mask: numpy.ndarray, align: Ragged) -> "WordpieceLayout":
        width = attention_mask.shape[1] if attention_mask.ndim == 2 else 0
        positions = numpy.flatnonzero(attention_mask.reshape(-1)) if width else numpy.zeros(0, dtype=int)
        flat_strings = [strings[p // width][p % width] for p in positions]
        compact = {int(p): i for i, p in enumerate(positions)}
        data = numpy.asarray(align.dataXd).reshape(-1)
        alignment, start = [], 0
        for length in numpy.asarray(align.lengths):
            alignment.append([compact[int(p)] for p in data[start:start + int(length)]])
            start += int(length)
        return cls(positions, flat_strings, alignment)


def aggregate(wordpiece_scores: numpy.ndarray, alignment: List[List[int]], how: str = "sum") -> numpy.ndarray:
    """Token scores from the scores of the real wordpieces (indexed like `WordpieceLayout.strings`)."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")
    scores = numpy.zeros(len(alignment), dtype="float32")
    if how == "sum":
        shares = numpy.zeros(len(wordpiece_scores), dtype="float32")
        for pieces in alignment:
            shares[pieces] += 1
        shares[shares == 0] = 1
        wordpiece_scores = wordpiece_scores / shares
    for i, pieces in enumerate(alignment):
        if not pieces:
            continue
        values = wordpiece_scores[pieces]
        if how == "sum":
            scores[i] = values.sum()
        elif how == "mean":
            scores[i] = values.mean()
        else:
            scores[i] = values[numpy.argmax(numpy.abs(values))]
    return scores
