"""Wordpiece → token aggregation."""

import numpy
import pytest
from thinc.types import Ragged

from spacy_attrib.align import WordpieceLayout, aggregate

# [CLS] un ##bor ##ing , [SEP] over 3 tokens ("unboring", ",", " "): token 2 has no wordpiece; a
# wordpiece shared by tokens 0 and 1 splits its score between them under "sum".
SCORES = numpy.array([0.5, 1.0, -3.0, 2.0, 4.0, 0.25], dtype="float32")
ALIGNMENT = [[1, 2, 3], [3, 4], []]


@pytest.mark.parametrize("how,expected", [
    ("sum", [1.0 - 3.0 + 1.0, 1.0 + 4.0, 0.0]),
    ("mean", [0.0, 3.0, 0.0]),
    ("max_abs", [-3.0, 4.0, 0.0]),
])
def test_aggregations(how, expected):
    numpy.testing.assert_allclose(aggregate(SCORES, ALIGNMENT, how), expected)


def test_sum_preserves_the_aligned_total():
    assert aggregate(SCORES, ALIGNMENT, "sum").sum() == pytest.approx(SCORES[1:5].sum())


def test_unknown_aggregation():
    with pytest.raises(ValueError, match="aggregation must be one of"):
        aggregate(SCORES, ALIGNMENT, "median")


def test_layout_skips_padding_and_maps_rows():
    strings = [["[CLS]", "a", "b", "[SEP]"], ["[CLS]", "b", "[SEP]", "[PAD]"]]
    mask = numpy.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    # token "a" at flat position 1; token "b" seen in both windows: positions 2 and 5
    align = Ragged(numpy.array([1, 2, 5], dtype="i"), numpy.array([1, 2], dtype="i"))
    layout = WordpieceLayout.from_rows(strings, mask, align)
    assert layout.strings == ["[CLS]", "a", "b", "[SEP]", "[CLS]", "b", "[SEP]"]
    assert layout.alignment == [[1], [2, 5]]
    numpy.testing.assert_array_equal(layout.positions, [0, 1, 2, 3, 4, 5, 6])
