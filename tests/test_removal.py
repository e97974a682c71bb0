"""Re-scoring with tokens removed, checked against the pipeline itself: deleting tokens scores what
`nlp` predicts on the shortened text, masking (or [UNK], or [PAD] attended to) what it predicts with that
token in their place; batching does not change a score; targets of tokens and spans move with deletion;
ner refuses deletion."""

import pytest
import torch
from spacy.tokens import Doc

from spacy_attrib.evaluation import Removal, Rescorer
from spacy_attrib.removal import reduce_doc, removable_tokens
from spacy_attrib.view import DifferentiableView

TEXTS = ["the plot was dull and slow .", "this movie is very good !", "it was a really great film , quite fun .",
         "that actor was awful but the story was great ."]


def words_doc(nlp, words):
    return Doc(nlp.vocab, words=words, spaces=[True] * (len(words) - 1) + [False])


def test_delete_scores_what_the_pipeline_predicts_on_the_kept_text(textcat_nlp):
    docs = list(textcat_nlp.pipe(TEXTS))
    requests = [Removal(d, removed, label) for d in range(len(docs)) for removed in ((), (1,), (0, 2, 3))
                for label in ("POS", "NEG")]
    scores = Rescorer(textcat_nlp, removal="delete").score(docs, requests)
    for request, score in zip(requests, scores):
        kept = [t.text for t in docs[request.d] if t.i not in request.removed]
        expected = textcat_nlp(words_doc(textcat_nlp, kept)).cats
        assert score.value == pytest.approx(expected[request.label], abs=1e-5)
        assert score.decision == ("POS", "NEG").index(max(expected, key=expected.get))


@pytest.mark.parametrize("removal,token", [("mask", "[MASK]"), ("unk", "[UNK]"), ("pad", "[PAD]")])
def test_mask_and_unk_score_the_pipeline_with_the_special_token_in_place(textcat_nlp, removal, token):
    docs = list(textcat_nlp.pipe(TEXTS))
    requests = [Removal(d, removed, "POS") for d in range(len(docs)) for removed in ((), (2,), (1, 3))]
    scores = Rescorer(textcat_nlp, removal=removal).score(docs, requests)
    for request, score in zip(requests, scores):
        # the tokenizer reads "[MASK]" in text as its mask token: the same wordpiece ids
        replaced = [token if t.i in request.removed else t.text for t in docs[request.d]]
        expected = textcat_nlp(words_doc(textcat_nlp, replaced)).cats["POS"]
        assert score.value == pytest.approx(expected, abs=1e-5)


def test_pad_keeps_the_attention_mask_on_the_pad_ids(textcat_nlp):
    # Wu & Ong's deletion: the [PAD] id where the removed wordpieces were, still attended to. The text
    # "[PAD]" is read by the tokenizer as that id with mask 1, so the comparison above is the same input.
    doc = textcat_nlp(words_doc(textcat_nlp, ["this", "[PAD]", "is", "[PAD]", "good", "!"]))
    view = DifferentiableView(textcat_nlp, output="prob")
    batch = view.encode([doc])
    pads = batch.input_ids == view.tokenizer.pad_token_id
    assert int(pads.sum()) == 2 and bool((batch.attention_mask[pads] == 1).all())
    docs = list(textcat_nlp.pipe(TEXTS))
    requests = [Removal(d, (1, 2), "POS") for d in range(len(docs))]
    padded = Rescorer(textcat_nlp, removal="pad").score(docs, requests)
    masked = Rescorer(textcat_nlp, removal="mask").score(docs, requests)
    assert all(abs(p.value - m.value) > 1e-4 for p, m in zip(padded, masked))  # a replacement of its own


def test_a_tokenizer_without_a_pad_token_cannot_pad(textcat_nlp):
    tokenizer = DifferentiableView(textcat_nlp).tokenizer
    pad_token, tokenizer.pad_token = tokenizer.pad_token, None  # (the tokenizer's own setter, restored below)
    try:
        with pytest.raises(ValueError, match="removal 'pad' needs the tokenizer's pad token.*has no pad token"):
            Rescorer(textcat_nlp, removal="pad")
        Rescorer(textcat_nlp, removal="mask")  # the other strategies do not need it
    finally:
        tokenizer.pad_token = pad_token
    assert Rescorer(textcat_nlp, removal="pad").replacement == tokenizer.pad_token_id == 0


@pytest.mark.parametrize("removal", ["delete", "mask"])
def test_scores_do_not_depend_on_batching(textcat_nlp, removal):
    docs = list(textcat_nlp.pipe(TEXTS))
    requests = [Removal(d, tuple(range(0, k)), "NEG") for d in range(len(docs)) for k in range(4)]
    together = Rescorer(textcat_nlp, removal=removal, batch_size=32, max_rows=128).score(docs, requests)
    apart = Rescorer(textcat_nlp, removal=removal, batch_size=1, max_rows=1)
    for request, score in zip(requests, together):
        assert score.value == pytest.approx(apart.score(docs, [request])[0].value, abs=1e-5)


def test_a_doc_with_every_token_deleted_scores_the_empty_doc(textcat_nlp):
    docs = list(textcat_nlp.pipe(TEXTS[:1]))
    everything = tuple(range(len(docs[0])))
    view = DifferentiableView(textcat_nlp, output="prob")
    with torch.no_grad():
        # (spacy-transformers runs an empty doc only beside another)
        empty = view.forward(view.encode([textcat_nlp.make_doc(""), docs[0]])).scores[0, 0]
    score = Rescorer(textcat_nlp, removal="delete").score(docs, [Removal(0, everything, "POS")])[0]
    assert score.value == pytest.approx(float(empty[0]), abs=1e-6)


def test_deleting_context_moves_token_targets(tagger_nlp):
    docs = list(tagger_nlp.pipe(["the movie was very good ."]))
    target = 4  # "good"
    request = Removal(0, (0, 2), "ADJ", token=target)
    reduced, moved = reduce_doc(docs[0], request)
    assert [t.text for t in reduced] == ["movie", "very", "good", "."] and moved.token == 2
    view = DifferentiableView(tagger_nlp, output="prob")
    with torch.no_grad():
        expected = view.forward(view.encode([reduced])).scores[0, 2, view.labels.index("ADJ")]
    score = Rescorer(tagger_nlp, removal="delete").score(docs, [request])[0]
    assert score.value == pytest.approx(float(expected), abs=1e-6)


def test_deleting_context_moves_span_targets(spancat_nlp):
    docs = list(spancat_nlp.pipe(["that actor was awful but the story was great ."]))
    span = next(s for s in docs[0].spans["sc"] if s.text == "great")
    request = Removal(0, (0, 1, 2), span.label_, span=(span.start, span.end))
    reduced, moved = reduce_doc(docs[0], request)
    assert reduced[moved.span[0]:moved.span[1]].text == "great"
    view = DifferentiableView(spancat_nlp, output="prob")
    batch = view.encode([reduced])
    with torch.no_grad():
        scores = view.forward(batch).scores[0]
    position = view.head.position(batch.plan, 0, None, moved.span, span.label_)
    expected = float(scores[position, view.labels.index(span.label_)])
    assert Rescorer(spancat_nlp, removal="delete").score(docs, [request])[0].value == pytest.approx(expected, abs=1e-6)


def test_ner_reads_entities_along_the_clean_path_and_refuses_deletion(ner_nlp):
    docs = [d for d in ner_nlp.pipe(["we saw alex person there today", "kim company was here then"]) if d.ents]
    with pytest.raises(ValueError, match="'delete' is not defined for the ner"):
        Rescorer(ner_nlp, removal="delete")
    entity = docs[0].ents[0]
    view = DifferentiableView(ner_nlp, output="prob")
    batch = view.encode(docs[:1])
    with torch.no_grad():
        clean = view.forward(batch).scores[0]
    expected = float(clean[0, view.labels.index(entity.label_)])
    request = Removal(0, (), entity.label_, span=(entity.start, entity.end))
    rescorer = Rescorer(ner_nlp, removal="mask")
    assert rescorer.score(docs, [request])[0].value == pytest.approx(expected, abs=1e-6)
    removable = removable_tokens(docs[0], [[0]] * len(docs[0]), None, (entity.start, entity.end))
    assert not set(range(entity.start, entity.end)) & set(removable.tolist())
    masked = rescorer.score(docs, [Removal(0, tuple(removable.tolist()), entity.label_, span=request.span)])[0]
    assert 0 < masked.value < 1 and masked.value != pytest.approx(expected, abs=1e-4)


def test_bad_settings_name_the_problem(textcat_nlp):
    with pytest.raises(ValueError, match="removal must be one of"):
        Rescorer(textcat_nlp, removal="drop")
    docs = list(textcat_nlp.pipe(TEXTS[:1]))
    with pytest.raises(ValueError, match="Unknown label 'MAYBE'"):
        Rescorer(textcat_nlp).score(docs, [Removal(0, (), "MAYBE")])
