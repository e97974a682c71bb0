"""Input marginalization (Kim et al. 2020) on tiny masked LMs of the tiny models' vocabularies: known answers
(a one-candidate masked LM is [UNK] occlusion in log-odds; the full vocabulary against a brute-force
marginal), the zeros the method must give, batching, and its errors."""

import random
from pathlib import Path

import numpy
import pytest
import spacy
import torch

from conftest import (build_pipeline, explain, make_masked_lm, make_method, make_tiny_bert, trigger_sentence,
                      weights_snapshot)
from spacy_attrib import iter_attributions
from spacy_attrib.methods.marginalization import load_masked_lm, log_odds

TEXTS = ["that actor was awful but the story was great .", "this movie is very good !", "unboring storyer"]


@pytest.fixture(scope="module")
def unk_mlm(tiny_bert, tmp_path_factory) -> str:
    return make_masked_lm(tmp_path_factory.mktemp("unk_mlm"), tiny_bert, certain="[UNK]")


@pytest.fixture(scope="module")
def ner_unk_mlm(ner_bert, tmp_path_factory) -> str:
    return make_masked_lm(tmp_path_factory.mktemp("ner_unk_mlm"), ner_bert, certain="[UNK]")


@pytest.fixture(scope="module")
def windowed_tagger_nlp(tiny_bert):
    """A tagger whose transformer windows (4 tokens, stride 4) do not overlap: a token in one window cannot
    change a tag in another."""
    return build_pipeline(tiny_bert, "tagger", window=4, stride=4)


@pytest.fixture(scope="module")
def overlapping_tagger_nlp(tiny_bert):
    """A tagger whose windows (6 tokens, stride 3) overlap: most tokens are in two rows."""
    return build_pipeline(tiny_bert, "tagger", window=6, stride=3)


def of_method(doc, method):
    """Every result of `method` on `doc` (its own, its tokens', its spans'), in a fixed order."""
    return [a for a in iter_attributions(doc) if a.method == method]


def ner_texts():
    rng = random.Random(5)
    return [" ".join(trigger_sentence(rng, with_trigger=True)[0]) for _ in range(4)]


@pytest.mark.parametrize("pipeline", ["textcat_nlp", "multilabel_nlp", "tagger_nlp", "ner_nlp", "spancat_nlp",
                                      "overlapping_tagger_nlp"])
def test_one_candidate_masked_lm_is_unk_occlusion_in_log_odds(request, pipeline):
    """All the mass on [UNK]: the marginal is the doc with the token's pieces [UNK] in every window, so
    a_i = log₂odds p(y|x) − log₂odds (p(y|x) − occlusion_i) with occlusion's unk removal on probabilities."""
    nlp = request.getfixturevalue(pipeline)
    mlm = request.getfixturevalue("ner_unk_mlm" if pipeline == "ner_nlp" else "unk_mlm")
    texts = ner_texts() if pipeline == "ner_nlp" else TEXTS + ["a really brilliant , quite wonderful movie ."]
    labels = "predicted" if pipeline in ("tagger_nlp", "overlapping_tagger_nlp", "ner_nlp") else "all"
    _, ours = explain(nlp, "attr_input_marginalization", texts, mlm=mlm, labels=labels)
    _, occluded = explain(nlp, "attr_occlusion", texts, removal="unk", output="prob", labels=labels)
    compared = 0
    for mine, theirs in zip(ours, occluded):
        pairs = zip(of_method(mine, "input_marginalization"), of_method(theirs, "occlusion"))
        for a, b in pairs:
            target = (a.label, a.token, a.span)
            assert (b.label, b.token, b.span) == target
            assert a.output == pytest.approx(b.output, abs=1e-6)
            # compared as probabilities: the marginal our weight of evidence implies, and p(y|x) − occlusion
            marginal_log_odds = log_odds(numpy.float64(a.output), 2) - a.scores.astype("float64")
            marginal = 1 / (1 + 2.0 ** -marginal_log_odds)
            numpy.testing.assert_allclose(marginal, a.output - b.scores, atol=1e-6, err_msg=str(target))
            # [UNK], and the original (weight 0) unless it is [UNK] itself
            originals = [{a.wordpieces[p] for p in pieces} for pieces in a.alignment]
            assert a.extras["candidates"] == [1 if pieces == {"[UNK]"} else 2 for pieces in originals]
            compared += 1
    assert compared >= len(texts)


def test_a_position_the_classifier_ignores_gets_exactly_zero(windowed_tagger_nlp, random_mlm):
    """The tag of a token in the first window does not depend on tokens of the second: whatever the
    candidates (here ~all the vocabulary), their marginal is the clean probability, exactly."""
    text = "the plot was dull and the story was great ."
    component, (doc,) = explain(windowed_tagger_nlp, "attr_input_marginalization", [text], mlm=random_mlm)
    first_window = [a for a in doc[0]._.attributions["input_marginalization"].values()]
    assert first_window
    for a in first_window:
        assert (a.scores[4:] == 0).all()
        assert numpy.abs(a.scores[:4]).max() > 1e-3
        assert min(a.extras["candidates"]) > 20  # a real marginalisation over many candidates
    last = list(doc[8]._.attributions["input_marginalization"].values())[0]
    assert (last.scores[:8] == 0).all() and last.scores[8] != 0


def test_all_mass_on_the_original_token_gives_zero(textcat_nlp, tiny_bert, tmp_path):
    """The known weakness (Pham et al. 2021): a token the masked LM is certain of scores 0, however much
    the classifier relies on it."""
    mlm = make_masked_lm(tmp_path / "certain_good", tiny_bert, certain="good")
    _, (doc,) = explain(textcat_nlp, "attr_input_marginalization", ["good good good"], mlm=mlm, labels="all")
    for a in doc._.attributions["input_marginalization"].values():
        assert (a.scores == 0).all()
        assert a.extras["candidates"] == [1, 1, 1]
    _, (occluded,) = explain(textcat_nlp, "attr_occlusion", ["good good good"], removal="unk", output="prob")
    assert numpy.abs(next(iter(occluded._.attributions["occlusion"].values())).scores).max() > 1e-3


def test_full_vocabulary_matches_a_brute_force_marginal(textcat_nlp, random_mlm):
    """σ = 0 and no cap: Eq. 2 over the whole vocabulary (special tokens but [UNK] excluded), computed
    here candidate by candidate with the masked LM and the view."""
    text = "the film was dull"
    component, (doc,) = explain(textcat_nlp, "attr_input_marginalization", [text], mlm=random_mlm, sigma=0.0,
                                max_candidates=10_000, labels="all")
    view = component.view
    batch = view.encode([doc])
    tokenizer = view.tokenizer
    mlm = load_masked_lm(random_mlm, view.device).model
    allowed = [i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids or i == tokenizer.unk_token_id]
    ids = batch.input_ids[0]
    assert len(ids) == len(doc) + 2  # one piece per token
    for label, a in doc._.attributions["input_marginalization"].items():
        k = view.labels.index(label)
        with torch.no_grad():
            clean = float(view.forward(batch).scores[0, 0, k])
            for i in range(len(doc)):
                masked = ids.clone()
                masked[i + 1] = tokenizer.mask_token_id
                likelihood = torch.softmax(mlm(input_ids=masked[None]).logits[0, i + 1].double(), -1)[allowed]
                replaced = ids.repeat(len(allowed), 1)
                replaced[:, i + 1] = torch.as_tensor(allowed)
                p = view.forward(batch, doc_index=[0] * len(allowed), input_ids=replaced).scores[:, 0, k].double()
                marginal = float((likelihood / likelihood.sum()) @ p)
                expected = log_odds(numpy.float64(clean), 2) - log_odds(numpy.float64(marginal), 2)
                assert a.scores[i] == pytest.approx(expected, abs=1e-4)
        assert a.extras["candidates"] == [len(allowed)] * len(doc)


def test_truncation_caps_the_candidates_and_keeps_the_original(textcat_nlp, random_mlm):
    """top_n = 3: three candidates plus the original where it is not among them; max_candidates caps σ
    truncation the same way; 2-piece tokens are marginalised as a whole (a beam of sequences)."""
    texts = ["unboring storyer", "the film was dull"]
    _, top = explain(textcat_nlp, "attr_input_marginalization", texts, mlm=random_mlm, top_n=3)
    _, capped = explain(textcat_nlp, "attr_input_marginalization", texts, mlm=random_mlm, max_candidates=3)
    for docs in (top, capped):
        for doc in docs:
            counts = next(iter(doc._.attributions["input_marginalization"].values())).extras["candidates"]
            assert set(counts) <= {3, 4} and len(counts) == len(doc)
    # every likelihood of the random masked LM exceeds σ, so both keep the 3 most likely: the same sets
    a = next(iter(top[1]._.attributions["input_marginalization"].values())).scores
    b = next(iter(capped[1]._.attributions["input_marginalization"].values())).scores
    numpy.testing.assert_allclose(a, b, atol=1e-6)


def test_scores_do_not_depend_on_batching(textcat_nlp, overlapping_tagger_nlp, random_mlm, texts):
    for nlp in (textcat_nlp, overlapping_tagger_nlp):
        _, together = explain(nlp, "attr_input_marginalization", texts, mlm=random_mlm, max_candidates=8)
        _, apart = explain(nlp, "attr_input_marginalization", texts, mlm=random_mlm, max_candidates=8,
                           batch_size=1, internal_batch_size=3)
        for x, y in zip(together, apart):
            for (target, a), (_, b) in zip(x._.attributions["input_marginalization"].items(),
                                           y._.attributions["input_marginalization"].items()):
                numpy.testing.assert_allclose(a.scores, b.scores, atol=1e-5, err_msg=str(target))
                assert a.extras["candidates"] == b.extras["candidates"]


def test_the_model_is_left_unchanged(textcat_dir, random_mlm, texts):
    nlp = spacy.load(textcat_dir)  # loaded: no .grad tensors yet (training leaves zeroed ones)
    before = weights_snapshot(nlp)
    explain(nlp, "attr_input_marginalization", texts, mlm=random_mlm, max_candidates=5)
    after = weights_snapshot(nlp)
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert (value == after[name]).all(), name
    hf = nlp.get_pipe("transformer").model.transformer
    assert all(p.grad is None for p in hf.parameters())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in hf.modules())
    model = load_masked_lm(random_mlm, torch.device("cpu")).model
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_masked_lm_is_loaded_once_on_first_use(textcat_nlp, random_mlm, tmp_path, monkeypatch):
    component = make_method(textcat_nlp, "attr_input_marginalization", mlm=str(tmp_path / "not_yet_trained"))
    assert component.cfg["mlm"].endswith("not_yet_trained")  # creating it loads nothing
    cpu = torch.device("cpu")
    monkeypatch.chdir(Path(random_mlm).parent)
    assert load_masked_lm(Path(random_mlm).name, cpu) is load_masked_lm(random_mlm, cpu)
    with pytest.raises(ValueError, match="Could not load the masked LM .*not_yet_trained"):
        component(textcat_nlp("a good film"))


def test_bad_settings_fail_clearly(textcat_nlp, tmp_path):
    with pytest.raises(ValueError, match="output must be 'prob'"):
        make_method(textcat_nlp, "attr_input_marginalization", mlm="x", output="log_prob")
    with pytest.raises(ValueError, match="sigma"):
        make_method(textcat_nlp, "attr_input_marginalization", mlm="x", sigma=1.5)
    with pytest.raises(ValueError, match="top_n"):
        make_method(textcat_nlp, "attr_input_marginalization", mlm="x", top_n=0)
    unset = make_method(textcat_nlp, "attr_input_marginalization")
    with pytest.raises(ValueError, match="set `mlm`"):
        unset(textcat_nlp("a good film"))
    other = make_tiny_bert(tmp_path / "other_bert", words=["x", "y", "z"])
    mismatched = make_method(textcat_nlp, "attr_input_marginalization",
                             mlm=make_masked_lm(tmp_path / "other_mlm", other))
    with pytest.raises(ValueError, match="does not have the explained transformer's wordpiece vocabulary"):
        mismatched(textcat_nlp("a good film"))
