"""The configs users actually have: `spacy init config -p textcat|textcat_multilabel|ner|spancat|tagger -G`
with both presets, the transformer swapped for the tiny model, trained a few steps with `spacy train`,
explained by every method."""

import random

import pytest
import spacy
from spacy.tokens import Doc, DocBin
from spacy.training import biluo_tags_to_spans

from spacy_attrib import iter_attributions

from conftest import quickstart_config, spacy_train, spans_of, tag_of, toy_texts, trigger_sentence

PIPES = ["textcat", "textcat_multilabel", "ner", "spancat", "tagger"]
METHODS = {"attr_saliency": {}, "attr_gradient_x_input": {}, "attr_integrated_gradients": {},
           "attr_smoothgrad": {"n_samples": 4}, "attr_occlusion": {}, "attr_kernel_shap": {"n_samples": 16}}


def training_docs(pipe: str):
    nlp = spacy.blank("en")
    docs = []
    if pipe == "ner":
        rng = random.Random(0)
        for _ in range(200):
            words, tags, _ = trigger_sentence(rng)
            doc = Doc(nlp.vocab, words=words)
            doc.ents = biluo_tags_to_spans(doc, tags)
            docs.append(doc)
        return docs
    for text, label in toy_texts(48):
        doc = nlp.make_doc(text)
        if pipe == "textcat":
            doc.cats = {"POS": float(label == "POS"), "NEG": float(label == "NEG")}
        elif pipe == "textcat_multilabel":
            doc.cats = {"POS": float(label == "POS"), "NEG": float(label == "NEG"), "LONG": float(len(doc) > 6)}
        elif pipe == "tagger":
            for token in doc:
                token.tag_ = tag_of(token.text)
        else:
            doc.spans["sc"] = [doc.char_span(start, end, label=label) for start, end, label in spans_of(doc)]
        docs.append(doc)
    return docs


@pytest.mark.parametrize("optimize", ["efficiency", "accuracy"])
@pytest.mark.parametrize("pipe", PIPES)
def test_quickstart_pipeline_is_explained(pipe, optimize, tiny_bert, ner_bert, tmp_path):
    docs = training_docs(pipe)
    DocBin(docs=docs).to_disk(tmp_path / "train.spacy")
    model = ner_bert if pipe == "ner" else tiny_bert
    config = quickstart_config(pipe, optimize, model, tmp_path / "train.spacy", steps=150 if pipe == "ner" else 20)
    if pipe == "ner":  # the planted-trigger task needs more, smaller updates than the toy tasks
        config["training"]["batcher"]["size"] = 100
    ensemble = config["components"][pipe]["model"]["@architectures"] == "spacy.TextCatEnsemble.v2"
    assert ensemble == (pipe.startswith("textcat") and optimize == "accuracy")
    nlp = spacy_train(config, tmp_path)
    for factory, settings in METHODS.items():
        nlp.add_pipe(factory, config=settings)
    explained = list(nlp.pipe([doc.text for doc in docs[:16]]))
    results = [(doc, a) for doc in explained for a in iter_attributions(doc)]
    assert {a.method for _, a in results} == {factory[len("attr_"):] for factory in METHODS}
    for doc, a in results:
        assert a.scores.shape == (len(doc),)
        if a.method == "integrated_gradients":
            assert a.extras["converged"]
            assert abs(a.delta) <= 0.01 * max(abs(a.output - a.extras["baseline_output"]), 0.1) + 1e-6
        assert ("not_attributed" in a.extras) == (ensemble and a.extras.get("removal") != "delete")
    if pipe == "ner":
        for doc in explained:
            explained_spans = {a.span for a in iter_attributions(doc)}
            assert explained_spans == {(e.start, e.end) for e in doc.ents}
