"""The ner head: the replayed path, entity outputs, batched entity attributions against a one-entity
reference, a planted-trigger task, bad input."""

import random
import warnings

import numpy
import pytest
import spacy
import torch
from captum.attr import IntegratedGradients as CaptumIG

from spacy_attrib.methods.integrated import baseline_inputs
from spacy_attrib.view import DifferentiableView

from conftest import explain, ner_config, trigger_sentence


def sentences(n: int, seed: int, with_trigger=None):
    rng = random.Random(seed)
    return [trigger_sentence(rng, with_trigger) for _ in range(n)]


def joined(n_sentences: int, seed: int) -> str:
    """Several planted-trigger sentences in one text: a doc with several entities."""
    return " . ".join(" ".join(words) for words, _, _ in sentences(n_sentences, seed, with_trigger=True))


@pytest.fixture(params=["ner_nlp", "ner_upper_nlp"])
def any_ner(request):
    return request.getfixturevalue(request.param)


def test_replayed_path_reproduces_doc_ents(any_ner):
    texts = [" ".join(words) for words, _, _ in sentences(30, seed=1)] + [joined(4, seed=2), joined(6, seed=3)]
    docs = list(any_ner.pipe(texts))
    view = DifferentiableView(any_ner)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = view.encode(docs)
    for doc, entities in zip(docs, batch.plan.entities):
        assert entities == [(e.start, e.end, e.label_) for e in doc.ents]
    assert sum(len(doc.ents) for doc in docs) >= 20
    assert any(e.end - e.start == 2 for doc in docs for e in doc.ents)  # B- and L- steps, not only U-


def test_entity_outputs_are_log_probabilities_of_their_transitions(any_ner):
    docs = list(any_ner.pipe([joined(3, seed=4)]))
    outputs = {}
    for output in ("log_prob", "prob", "logit"):
        view = DifferentiableView(any_ner, output=output)
        batch = view.encode(docs)
        with view.frozen(), torch.no_grad():
            outputs[output] = view.forward(batch)
        targets = view.targets(batch, outputs[output], "predicted")[0]
    assert [t.span for t in targets] == [(e.start, e.end) for e in docs[0].ents]
    values = {k: torch.stack([o.scores[0, t.position, t.label_index] for t in targets]) for k, o in outputs.items()}
    assert (values["log_prob"] <= 0).all() and (values["log_prob"] > -5).all()
    torch.testing.assert_close(values["prob"], values["log_prob"].exp())
    # the logit output is the sum of the chosen actions' raw scores; log_prob normalises each step
    plan = batch.plan
    logits = outputs["logit"].logits[0]
    for e, target in enumerate(targets):
        steps = plan.membership[0, :, e].nonzero().flatten()
        chosen = plan.actions[0, steps]
        assert float(values["logit"][e]) == pytest.approx(float(logits[steps, chosen].sum()), abs=1e-5)
        normaliser = torch.logsumexp(logits[steps].masked_fill(~plan.allowed[0, steps], float("-inf")), -1)
        assert float(values["log_prob"][e]) == pytest.approx(float((logits[steps, chosen] - normaliser).sum()),
                                                             abs=1e-5)


def test_entity_gradient_matches_finite_differences(any_ner):
    docs = list(any_ner.pipe([joined(2, seed=5)]))
    view = DifferentiableView(any_ner)
    batch = view.encode(docs)
    with view.frozen():
        inputs = view.capture(batch).requires_grad_(True)
        value = view.forward(batch, inputs).scores[0, 1].sum()  # the second entity
        (grad,) = torch.autograd.grad(value, inputs)
        direction = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(0))
        direction = direction * batch.attention_mask.unsqueeze(-1)
        eps = 1e-2
        with torch.no_grad():
            plus = view.forward(batch, inputs + eps * direction).scores[0, 1].sum()
            minus = view.forward(batch, inputs - eps * direction).scores[0, 1].sum()
    assert float((grad * direction).sum()) == pytest.approx(float(plus - minus) / (2 * eps), rel=2e-2, abs=1e-5)


def test_batched_entities_match_one_entity_at_a_time(any_ner):
    """All entities of several docs in one batched pass (one forward, one backward per entity slot) equal
    Captum's integrated gradients run for each entity alone, with its own full passes."""
    texts = [joined(3, seed=6), joined(2, seed=7), " ".join(sentences(1, seed=8, with_trigger=True)[0][0])]
    component, docs = explain(any_ner, "attr_integrated_gradients", texts, n_steps=50)
    view = component.view
    n_entities = 0
    for doc in docs:
        batch = view.encode([doc])
        with view.frozen():
            inputs = view.capture(batch)
            baseline = baseline_inputs(view, batch, inputs, "pad")
            for e, ent in enumerate(doc.ents):
                label_index = view.labels.index(ent.label_)

                def f(values):
                    return view.forward(batch, values, doc_index=[0] * values.shape[0]).scores[:, e, label_index]

                expected = CaptumIG(f).attribute(inputs, baselines=baseline, n_steps=50, method="gausslegendre")
                ours = ent._.attributions["integrated_gradients"][ent.label_]
                numpy.testing.assert_allclose(ours.wordpiece_scores, expected.sum(-1)[0].numpy(), atol=1e-4)
                assert ours.span == (ent.start, ent.end)
                n_entities += 1
    assert n_entities >= 6


def test_planted_trigger_is_found(ner_nlp):
    """The trigger word decides each entity's label: integrated gradients rank it among the two most
    relevant tokens for at least 90 % of entities, each within the completeness tolerance."""
    held_out = sentences(60, seed=100, with_trigger=True)
    docs = list(ner_nlp.pipe([" ".join(words) for words, _, _ in held_out]))
    correct = [[(e.start, e.end, e.label_) for e in doc.ents] == [(e.start, e.end, e.label_) for e in
                                                                    spacy.training.biluo_tags_to_spans(doc, tags)]
               for doc, (_, tags, _) in zip(docs, held_out)]
    assert numpy.mean(correct) >= 0.9
    component, docs = explain(ner_nlp, "attr_integrated_gradients", [doc.text for doc in docs])
    hits, gaps = [], []
    for doc, (_, _, trigger_at) in zip(docs, held_out):
        for ent in doc.ents:
            attribution = ent._.attributions["integrated_gradients"][ent.label_]
            hits.append(trigger_at in numpy.argsort(-attribution.scores)[:2])
            gaps.append(attribution.extras["relative_delta"])
            assert attribution.extras["converged"]
    assert len(hits) >= 50
    assert numpy.mean(hits) >= 0.9, f"trigger in the top two for {numpy.mean(hits):.1%} of {len(hits)} entities"
    assert max(gaps) <= 0.01


def test_docs_without_entities_and_one_token_entities(ner_nlp):
    no_trigger = " ".join(sentences(1, seed=9, with_trigger=False)[0][0])
    one_token = next(" ".join(w) for w, tags, _ in sentences(40, seed=10, with_trigger=True) if tags.count("O") ==
                     len(tags) - 1)
    _, (empty, single) = explain(ner_nlp, "attr_gradient_x_input", [no_trigger, one_token])
    assert not empty.ents and empty._.attributions == {"gradient_x_input": {}}
    (ent,) = single.ents
    assert len(ent) == 1
    (label, attribution), = ent._.attributions["gradient_x_input"].items()
    assert label == ent.label_ and attribution.scores.shape == (len(single),)
    assert single._.attributions == {"gradient_x_input": {}}  # results live on the entity


def test_labels_filter_entities(ner_nlp):
    text = joined(6, seed=11)
    _, (doc,) = explain(ner_nlp, "attr_saliency", [text], labels=["PER"])
    assert {e.label_ for e in doc.ents} - {"PER"}
    for ent in doc.ents:
        assert set(ent._.attributions.get("saliency", {})) == ({"PER"} if ent.label_ == "PER" else set())
    with pytest.raises(ValueError, match="labels = 'all' is not defined for the ner"):
        explain(ner_nlp, "attr_saliency", [text], labels="all")


def test_beam_ner_is_refused(ner_bert):
    from conftest import transformer_config

    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config=transformer_config(ner_bert))
    nlp.add_pipe("beam_ner", config=ner_config(False))
    nlp.get_pipe("beam_ner").add_label("PER")
    nlp.initialize()
    with pytest.raises(ValueError, match="beam-search ner.*Supported: the greedy 'ner'"):
        DifferentiableView(nlp)


def test_unsupported_head_kind(ner_bert):
    from conftest import LISTENER, transformer_config

    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config=transformer_config(ner_bert))
    nlp.add_pipe("parser", config={"model": {**ner_config(False)["model"], "state_type": "parser",
                                             "tok2vec": LISTENER}})
    with pytest.raises(ValueError, match=r"'parser' \(DependencyParser\) is not a supported head kind; supported: "
                                         "textcat, textcat_multilabel, tagger, ner, spancat"):
        DifferentiableView(nlp, "parser")
