"""The component base: configuration, targets, bad input, serialization, entry points."""

from importlib.metadata import entry_points

import numpy
import pytest
import spacy
from spacy.language import Language

from conftest import explain, make_method

FACTORIES = ["attr_saliency", "attr_gradient_x_input", "attr_integrated_gradients", "attr_smoothgrad"]


def test_factories_are_entry_points():
    found = {ep.name: ep for ep in entry_points(group="spacy_factories")}
    for factory in FACTORIES:
        found[factory].load()  # what spaCy does on a lookup of an unknown factory name
        assert Language.has_factory(factory)


def test_user_first_contact(textcat_dir):
    """`spacy.load`, `add_pipe`, `doc._.attributions`: the whole first contact, on a saved pipeline."""
    nlp = spacy.load(textcat_dir)
    nlp.add_pipe("attr_integrated_gradients")
    doc = nlp("A warm, witty and wise film.")
    predicted = max(doc.cats, key=doc.cats.get)
    attribution = doc._.attributions["integrated_gradients"][predicted]
    assert attribution.scores.shape == (len(doc),)
    assert attribution.extras["converged"]
    assert abs(attribution.delta) <= 0.01 * max(abs(attribution.output - attribution.extras["baseline_output"]), 0.1)


def test_saved_pipeline_with_attribution_component(textcat_dir, tmp_path):
    nlp = spacy.load(textcat_dir)
    nlp.add_pipe("attr_smoothgrad", config={"n_samples": 3, "labels": ["NEG"], "key": "sg"})
    nlp.to_disk(tmp_path / "with_attr")
    loaded = spacy.load(tmp_path / "with_attr")
    assert loaded.get_pipe("attr_smoothgrad").cfg == nlp.get_pipe("attr_smoothgrad").cfg
    text = "the plot was dull and slow ."
    a = nlp(text)._.attributions["sg"]["NEG"]
    b = loaded(text)._.attributions["sg"]["NEG"]
    numpy.testing.assert_allclose(a.wordpiece_scores, b.wordpiece_scores, atol=1e-6)


@pytest.mark.parametrize("labels,expected", [("all", {"POS", "NEG"}), (["NEG"], {"NEG"})])
def test_labels_setting(textcat_nlp, labels, expected):
    _, (doc,) = explain(textcat_nlp, "attr_gradient_x_input", ["this movie is very good !"], labels=labels)
    assert set(doc._.attributions["gradient_x_input"]) == expected


@pytest.mark.parametrize("fixture,head", [("textcat_nlp", "textcat"), ("tagger_nlp", "tagger")])
def test_last_label_is_explained_whatever_the_prediction(request, fixture, head):
    """labels = "last": Wu & Ong's target, the head's last label, on every doc (or token)."""
    nlp = request.getfixturevalue(fixture)
    last = nlp.get_pipe(head).labels[-1]
    texts = ["this movie is very good !", "the plot was dull and slow ."]
    _, docs = explain(nlp, "attr_gradient_x_input", texts, labels="last")
    if head == "textcat":
        assert [set(doc._.attributions["gradient_x_input"]) for doc in docs] == [{last}, {last}]
    else:
        assert all(set(token._.attributions["gradient_x_input"]) == {last} for doc in docs for token in doc)


def test_all_labels_of_an_exclusive_head_sum_to_zero_in_prob_space(textcat_nlp):
    """With output = prob and two exclusive labels, p(POS) + p(NEG) = 1, so their gradients cancel."""
    _, (doc,) = explain(textcat_nlp, "attr_gradient_x_input", ["the story was warm"], labels="all",
                        output="prob")
    by_label = doc._.attributions["gradient_x_input"]
    numpy.testing.assert_allclose(by_label["POS"].wordpiece_scores, -by_label["NEG"].wordpiece_scores, atol=1e-6)


def test_multilabel_predicted_labels(multilabel_nlp, texts):
    _, docs = explain(multilabel_nlp, "attr_saliency", texts)
    for doc in docs:
        predicted = {label for label, p in doc.cats.items() if p >= 0.5}
        assert set(doc._.attributions["saliency"]) == predicted


@pytest.mark.parametrize("factory", ["attr_saliency", "attr_integrated_gradients"])
def test_multilabel_all_labels_in_one_pass_equal_per_label_runs(multilabel_nlp, texts, factory):
    key = factory[len("attr_"):]
    _, every = explain(multilabel_nlp, factory, texts[:4], labels="all")
    for label in multilabel_nlp.get_pipe("textcat_multilabel").labels:
        _, alone = explain(multilabel_nlp, factory, texts[:4], labels=[label])
        for doc, doc_alone in zip(every, alone):
            numpy.testing.assert_allclose(doc._.attributions[key][label].wordpiece_scores,
                                          doc_alone._.attributions[key][label].wordpiece_scores, atol=1e-5)


def test_tagger_all_labels(tagger_nlp):
    component, (doc,) = explain(tagger_nlp, "attr_gradient_x_input", ["it was fun"], labels="all")
    for token in doc:
        assert set(token._.attributions["gradient_x_input"]) == set(component.view.labels)


def test_empty_and_whitespace_docs(textcat_nlp):
    _, (empty, blank, mixed) = explain(textcat_nlp, "attr_integrated_gradients", ["", "   ", "good \n film"],
                                       n_steps=4)
    assert empty._.attributions == {"integrated_gradients": {}}
    (attribution,) = blank._.attributions["integrated_gradients"].values()
    numpy.testing.assert_array_equal(attribution.scores, numpy.zeros(len(blank)))
    (attribution,) = mixed._.attributions["integrated_gradients"].values()
    whitespace = [t.i for t in mixed if t.is_space]
    assert whitespace and all(attribution.scores[i] == 0 for i in whitespace)


def test_unknown_label_is_a_clear_error(textcat_nlp):
    component = make_method(textcat_nlp, "attr_saliency", labels=["POSITIVE"])
    with pytest.raises(ValueError, match=r"Unknown label\(s\) \['POSITIVE'\].*'POS', 'NEG'"):
        component(textcat_nlp.make_doc("good"))
    with pytest.raises(ValueError, match="labels.*'top'"):
        make_method(textcat_nlp, "attr_saliency", labels="top")


BAD_SETTINGS = [({"aggregation": "median"}, "aggregation"), ({"output": "entropy"}, "output"),
                ({"dtype": "float16"}, "dtype"), ({"attribute_at": "layer"}, "attribute_at"),
                ({"attribute_at": True}, "attribute_at"), ({"head": "parser"}, "No component named 'parser'")]


@pytest.mark.parametrize("setting,message", BAD_SETTINGS)
def test_bad_settings_fail_when_the_component_is_created(textcat_nlp, setting, message):
    with pytest.raises(ValueError, match=message):
        make_method(textcat_nlp, "attr_saliency", **setting)


@pytest.mark.parametrize("setting,message", BAD_SETTINGS[:4])
def test_bad_settings_fail_on_spacy_load(textcat_dir, tmp_path, setting, message):
    """A saved pipeline whose config has a bad setting does not load (instead of failing on a doc)."""
    nlp = spacy.load(textcat_dir)
    nlp.add_pipe("attr_saliency")
    nlp.to_disk(tmp_path / "pipeline")
    config = spacy.util.load_config(tmp_path / "pipeline" / "config.cfg")
    config["components"]["attr_saliency"].update(setting)
    config.to_disk(tmp_path / "pipeline" / "config.cfg")
    with pytest.raises(ValueError, match=message):
        spacy.load(tmp_path / "pipeline")


def test_head_of_unsupported_kind(textcat_nlp):
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", source=textcat_nlp)
    nlp.add_pipe("textcat", source=textcat_nlp)
    nlp.add_pipe("senter")
    with pytest.raises(ValueError, match="'senter' .*not a supported head kind; supported: textcat, "
                                         "textcat_multilabel, tagger, ner, spancat"):
        nlp.add_pipe("attr_saliency", config={"head": "senter"})


def test_factories_declare_what_they_assign():
    for factory in FACTORIES:
        assert "doc._.attributions" in Language.get_factory_meta(factory).assigns


def test_no_transformer_fails_on_initialize():
    nlp = spacy.blank("en")
    textcat = nlp.add_pipe("textcat")
    textcat.add_label("POS")
    textcat.add_label("NEG")
    nlp.add_pipe("attr_saliency")
    with pytest.raises(ValueError, match="no spacy-transformers 'transformer' component"):
        nlp.initialize()


@pytest.mark.parametrize("aggregation", ["mean", "max_abs"])
def test_aggregation_setting(textcat_nlp, aggregation):
    _, (doc,) = explain(textcat_nlp, "attr_gradient_x_input", ["unboring storyer ."], aggregation=aggregation)
    (attribution,) = doc._.attributions["gradient_x_input"].values()
    for token, pieces in zip(doc, attribution.alignment):
        values = attribution.wordpiece_scores[pieces]
        expected = values.mean() if aggregation == "mean" else values[numpy.abs(values).argmax()]
        assert attribution.scores[token.i] == pytest.approx(expected, abs=1e-7)


LONG_TEXT = " ".join(["the film was good and the plot was warm ."] * 4)


@pytest.fixture(scope="module")
def windowed_nlp(tiny_bert):
    """A textcat whose transformer sees 16-token windows with stride 12."""
    from conftest import build_pipeline

    return build_pipeline(tiny_bert, "textcat", n_epochs=1, window=16, stride=12)


def test_long_docs_span_several_windows(windowed_nlp):
    """A doc longer than the span window is split into strided windows; completeness holds over all
    of them and a token in two windows collects both windows' scores."""
    _, (doc,) = explain(windowed_nlp, "attr_integrated_gradients", [LONG_TEXT])
    (attribution,) = doc._.attributions["integrated_gradients"].values()
    assert attribution.wordpieces.count("[CLS]") > 1
    assert max(len(pieces) for pieces in attribution.alignment) == 2  # overlapping windows
    assert attribution.extras["relative_delta"] < 0.01


@pytest.mark.parametrize("factory", FACTORIES)
def test_long_doc_in_row_chunks_matches_one_pass(windowed_nlp, factory):
    """internal_batch_size below a doc's window count: the transformer runs in checkpointed row chunks,
    with the same result."""
    nlp, text = windowed_nlp, LONG_TEXT
    small = {"attr_integrated_gradients": {"n_steps": 6}, "attr_smoothgrad": {"n_samples": 3}}.get(factory, {})
    _, (one_pass,) = explain(nlp, factory, [text], **small)
    _, (chunked,) = explain(nlp, factory, [text], internal_batch_size=2, **small)
    key = factory[len("attr_"):]
    (label, expected), = one_pass._.attributions[key].items()
    assert len([w for w in expected.wordpieces if w == "[CLS]"]) > 2
    numpy.testing.assert_allclose(chunked._.attributions[key][label].wordpiece_scores, expected.wordpiece_scores,
                                  atol=1e-5)
