"""attr_random: every head kind gets one result per target, seeded by the doc and target alone (so batching
and repeats do not change it), and the seed setting changes it."""

import numpy
import pytest

from spacy_attrib import iter_attributions

from conftest import explain

TEXTS = {"textcat_nlp": ["this movie is very good !", "the plot was dull ."],
         "multilabel_nlp": ["this movie is very good !", "the plot was dull ."],
         "tagger_nlp": ["it was fun", "the actor was awful"],
         "spancat_nlp": ["this movie is very good !", "that actor was awful but the story was great ."],
         "ner_nlp": ["we saw alex person there today", "kim company was here then"]}


def results(docs):
    return {(d, a.label, a.token, a.span): a.scores for d, doc in enumerate(docs) for a in iter_attributions(doc)}


@pytest.mark.parametrize("fixture", sorted(TEXTS))
def test_random_is_seeded_per_doc_and_target_for_every_head_kind(request, fixture):
    nlp = request.getfixturevalue(fixture)
    texts = TEXTS[fixture]
    _, together = explain(nlp, "attr_random", texts)
    _, alone = explain(nlp, "attr_random", texts[1:], batch_size=1)
    _, reseeded = explain(nlp, "attr_random", texts, seed=1)
    first = results(together)
    assert first and all(len(scores) == len(together[d]) for (d, *_), scores in first.items())
    for (d, *target), scores in results(alone).items():
        numpy.testing.assert_array_equal(scores, first[(d + 1, *target)])
    assert any(not numpy.array_equal(scores, results(reseeded)[key]) for key, scores in first.items())
