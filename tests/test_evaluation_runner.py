"""`evaluate` end to end on the tiny model: a perfect explanation beats the random floor, every target kind
is measured, already explained docs give the same numbers, reports and plots are written, the model is
left as it was."""

import numpy
import pytest
import spacy
import srsly
from PIL import Image
from spacy.tokens import DocBin

from spacy_attrib import iter_attributions
from spacy_attrib.evaluation import PRESETS, evaluate

from conftest import gold_docs, make_method, weights_snapshot


def by_metric(report, method, protocol=None):
    return {r.metric: r.estimate for r in report.results
            if r.method == method and (protocol is None or r.protocol == protocol)}


@pytest.fixture(scope="module")
def keyword_methods(keyword_nlp):
    """keyword_nlp with the keyword oracle and the random floor, for this module's reports."""
    for name in ("attr_test_oracle", "attr_random"):
        keyword_nlp.add_pipe(name)
    try:
        yield keyword_nlp
    finally:
        for name in ("attr_test_oracle", "attr_random"):
            keyword_nlp.remove_pipe(name)


@pytest.fixture(scope="module")
def keyword_report(keyword_methods):
    return evaluate(keyword_methods, gold_docs(keyword_methods, 40, seed=5), protocols=["eraser", "degradation"],
                    n_resamples=300)


def test_a_perfect_explanation_beats_random_and_suffices(keyword_report):
    oracle = by_metric(keyword_report, "oracle", "eraser")
    floor = by_metric(keyword_report, "random", "eraser")
    assert oracle["comprehensiveness"].low > floor["comprehensiveness"].high
    assert abs(oracle["sufficiency"].value) < 0.1
    assert floor["sufficiency"].value > oracle["sufficiency"].value + 0.2
    assert oracle["comprehensiveness"].n == floor["comprehensiveness"].n == 40


def test_degradation_orders_morf_below_lerf_for_the_perfect_explanation(keyword_report):
    oracle = by_metric(keyword_report, "oracle", "degradation")
    floor = by_metric(keyword_report, "random", "degradation")
    assert oracle["degradation_area_between"].low > 0.1
    assert oracle["degradation_area_between"].value > floor["degradation_area_between"].high
    curve = next(r.curve for r in keyword_report.results
                 if r.method == "oracle" and r.metric == "degradation_morf")
    assert curve["fraction"] == [0.0] + list(PRESETS["degradation"].fractions)
    # accuracy against the gold labels: the model's own at 0, falling as the sentiment words go
    assert curve["accuracy"][0] >= 0.9 and curve["accuracy"][-1] <= curve["accuracy"][0] - 0.2
    assert all(low <= mean <= high for low, mean, high in zip(curve["ci_low"], curve["mean"], curve["ci_high"]))


def test_plausibility_of_the_perfect_explanation_is_one(keyword_report):
    oracle = by_metric(keyword_report, "oracle", "plausibility")
    floor = by_metric(keyword_report, "random", "plausibility")
    assert oracle["token_f1"].value == oracle["iou"].value == oracle["auprc"].value == pytest.approx(1.0)
    # the AUPRC of a random ranking is about the share of rationale tokens (1 or 2 of ~6-9)
    assert 0.1 < floor["auprc"].value < 0.5


def test_time_and_dataset_consistency_are_reported(keyword_report):
    for method in ("oracle", "random"):
        metrics = by_metric(keyword_report, method)
        assert metrics["seconds_per_doc"].value > 0 and metrics["seconds_per_doc"].n == 40
        assert metrics["dataset_consistency"].n > 0


def test_report_json_and_plots(keyword_report, tmp_path):
    keyword_report.to_json(tmp_path / "results.json")
    data = srsly.read_json(tmp_path / "results.json")
    assert data["spacy_attrib_version"] and data["pipeline"]["components"][:2] == ["transformer", "textcat"]
    row = next(r for r in data["results"] if r["protocol"] == "eraser" and r["metric"] == "comprehensiveness")
    assert set(row) >= {"protocol", "method", "metric", "value", "ci_low", "ci_high", "n"}
    assert [p["name"] for p in data["protocols"]] == ["eraser", "degradation"]
    paths = keyword_report.plot(tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["degradation_degradation.png", "eraser_aopc.png"]
    for path in paths:
        pixels = numpy.asarray(Image.open(path).convert("RGB"))
        assert len(numpy.unique(pixels.reshape(-1, 3), axis=0)) > 20  # lines, bands and bars were drawn


def test_already_explained_docs_give_the_same_numbers(textcat_nlp, tmp_path):
    textcat_nlp.add_pipe("attr_gradient_x_input")
    try:
        docs = gold_docs(textcat_nlp, 12, seed=3)
        first = evaluate(textcat_nlp, docs, protocols=["eraser"], diagnostics=False, n_resamples=50)
        explained = list(textcat_nlp.pipe(docs))
        DocBin(docs=explained, store_user_data=True).to_disk(tmp_path / "explained.spacy")
        loaded = list(DocBin().from_disk(tmp_path / "explained.spacy").get_docs(textcat_nlp.vocab))
        again = evaluate(textcat_nlp, loaded, protocols=["eraser"], diagnostics=False, n_resamples=50)
    finally:
        textcat_nlp.remove_pipe("attr_gradient_x_input")
    a, b = by_metric(first, "gradient_x_input", "eraser"), by_metric(again, "gradient_x_input", "eraser")
    for metric in ("comprehensiveness", "sufficiency"):
        assert a[metric].value == pytest.approx(b[metric].value, abs=1e-5)
    assert "seconds_per_doc" not in by_metric(again, "gradient_x_input")  # nothing was run to time


@pytest.mark.parametrize("fixture,removal,kind", [("tagger_nlp", "delete", "token"), ("tagger_nlp", "mask", "token"),
                                                  ("spancat_nlp", "delete", "span"), ("ner_nlp", "mask", "span")])
def test_every_target_kind_is_measured(request, fixture, removal, kind):
    nlp = request.getfixturevalue(fixture)
    texts = (["we saw alex person there today", "kim company was here then", "then max city was there"]
             if fixture == "ner_nlp" else ["the movie was very good .", "that actor was awful but the story was great ."])
    method = make_method(nlp, "attr_saliency")
    docs = list(nlp.pipe(texts))
    method.set_annotations(docs, method.predict(docs))
    targets = sum(1 for doc in docs for a in iter_attributions(doc))
    nlp.add_pipe("attr_saliency")  # the component the evaluation measures; the docs are already explained
    try:
        protocol = PRESETS["eraser"].with_changes(name="test", removal=removal)
        report = evaluate(nlp, docs, protocols=[protocol], diagnostics=False, n_resamples=50)
    finally:
        nlp.remove_pipe("attr_saliency")
    metrics = by_metric(report, "saliency", "test")
    assert metrics["comprehensiveness"].n == targets > 0
    assert numpy.isfinite(metrics["comprehensiveness"].value) and numpy.isfinite(metrics["sufficiency"].value)


def test_confidence_indication_and_rationale_consistency(textcat_nlp, keyword_nlp):
    for nlp in (textcat_nlp, keyword_nlp):
        nlp.add_pipe("attr_gradient_x_input", config={"labels": "all"})
    try:
        docs = gold_docs(textcat_nlp, 30, seed=7)
        report = evaluate(textcat_nlp, docs, protocols=[], compare_with=keyword_nlp, n_resamples=100)
        itself = evaluate(textcat_nlp, docs, protocols=[], compare_with=textcat_nlp, n_resamples=100)
    finally:
        for nlp in (textcat_nlp, keyword_nlp):
            nlp.remove_pipe("attr_gradient_x_input")
    metrics = by_metric(report, "gradient_x_input", "diagnostics")
    assert 0 <= metrics["ci_mae"].value <= metrics["ci_max_error"].value < 1
    assert -1 <= metrics["rationale_consistency"].value <= 1 and metrics["rationale_consistency"].n == 30
    # a model against itself: every distance is 0, so ρ is undefined (None), not NaN
    assert by_metric(itself, "gradient_x_input", "diagnostics")["rationale_consistency"].value is None


def test_gold_protocols_need_the_gold_label_explained(textcat_nlp):
    textcat_nlp.add_pipe("attr_random")
    try:
        docs = list(textcat_nlp.pipe(gold_docs(textcat_nlp, 6, seed=1)))  # explained: their cats are predictions
        with pytest.raises(ValueError, match="explained no gold label"):
            evaluate(textcat_nlp, docs, protocols=["iba"], diagnostics=False)
        report = evaluate(textcat_nlp, gold_docs(textcat_nlp, 6, seed=1), protocols=["iba"], diagnostics=False,
                          n_resamples=50)
    finally:
        textcat_nlp.remove_pipe("attr_random")
    assert by_metric(report, "random", "iba")["degradation_morf"].n <= 6


def test_evaluation_leaves_the_model_untouched(textcat_dir):
    nlp = spacy.load(textcat_dir)  # loaded: no .grad tensors yet (training leaves zeroed ones)
    before = weights_snapshot(nlp)
    nlp.add_pipe("attr_integrated_gradients")
    evaluate(nlp, gold_docs(nlp, 6, seed=2), protocols=["atanasova"], n_resamples=20)
    after = weights_snapshot(nlp)
    assert before.keys() == after.keys()
    for key in before:
        assert (numpy.asarray(before[key]) == numpy.asarray(after[key])).all(), key
    assert all(p.grad is None for p in nlp.get_pipe("transformer").model.transformer.parameters())


def test_bad_input_names_the_problem(textcat_nlp):
    with pytest.raises(ValueError, match="no attribution component"):
        evaluate(textcat_nlp, gold_docs(textcat_nlp, 2, seed=0))
    textcat_nlp.add_pipe("attr_random")
    try:
        with pytest.raises(ValueError, match="Unknown method 'lime'"):
            evaluate(textcat_nlp, gold_docs(textcat_nlp, 2, seed=0), methods=["lime"])
        with pytest.raises(ValueError, match="Unknown protocol 'aopc'"):
            evaluate(textcat_nlp, gold_docs(textcat_nlp, 2, seed=0), protocols=["aopc"])
    finally:
        textcat_nlp.remove_pipe("attr_random")


def test_a_spacy_corpus_of_examples_is_evaluated_against_its_gold(textcat_nlp):
    from pathlib import Path

    reader = spacy.registry.readers.get("spacy_attrib.SST2.v1")(Path(__file__).parent / "data" / "sst2" / "dev.tsv")
    examples = list(reader(textcat_nlp))
    textcat_nlp.add_pipe("attr_random")
    try:
        report = evaluate(textcat_nlp, examples, protocols=["degradation"], diagnostics=False, n_resamples=20)
    finally:
        textcat_nlp.remove_pipe("attr_random")
    curve = next(r.curve for r in report.results if r.metric == "degradation_morf")
    # accuracy at 0 is the pipeline's accuracy against the examples' gold cats
    predicted = [max(doc.cats, key=doc.cats.get) for doc in textcat_nlp.pipe(e.reference.text for e in examples)]
    gold = [max(e.reference.cats, key=e.reference.cats.get) for e in examples]
    assert curve["accuracy"][0] == pytest.approx(sum(p == g for p, g in zip(predicted, gold)) / len(gold))
    assert len(examples) == 5


# -- Wu & Ong's word deletion ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def wu_ong_report(keyword_methods):
    docs = gold_docs(keyword_methods, 80, seed=11)  # 19 of them have 10 tokens (one template of five)
    return docs, evaluate(keyword_methods, docs, protocols=["wu_ong"], diagnostics=False, n_resamples=300)


def test_wu_ong_measures_the_long_correctly_classified_docs(keyword_methods, wu_ong_report):
    docs, report = wu_ong_report
    predicted = [max(doc.cats, key=doc.cats.get) for doc in keyword_methods.pipe(d.text for d in docs)]
    gold = [max(d.cats, key=d.cats.get) for d in docs]
    expected = sum(len(d) >= 10 and p == g for d, p, g in zip(docs, predicted, gold))  # 19 of 80
    for method in ("oracle", "random"):
        morf = next(r for r in report.results if r.method == method and r.metric == "degradation_morf")
        assert morf.estimate.n == expected >= 15
        assert morf.curve["k"] == list(range(11)) and len(morf.curve["accuracy"]) == 11
        assert morf.curve["accuracy"][0] == 1.0  # every kept doc is classified correctly


def test_wu_ong_oracle_drops_accuracy_faster_than_random(wu_ong_report, tmp_path):
    _, report = wu_ong_report
    accuracy = {r.method: r.curve["accuracy"] for r in report.results if r.metric == "degradation_morf"}
    # measured: oracle drops .105, .474, .474 at k = 1, 2, 3 (both sentiment words gone at 2); random 0, 0, 0
    for k in (1, 2, 3):
        assert 1 - accuracy["oracle"][k] > 1 - accuracy["random"][k]
    assert 1 - accuracy["oracle"][2] >= 0.3
    area = by_metric(report, "oracle", "wu_ong")["degradation_area_between"]  # over k: 3.67 [2.73, 4.73]
    assert area.low > by_metric(report, "random", "wu_ong")["degradation_area_between"].high  # −1.11 [−2.13, −0.12]
    assert [p.name for p in report.plot(tmp_path)] == ["wu_ong_degradation.png"]


def test_protocol_filters_drop_exactly_the_short_and_the_misclassified_docs(textcat_nlp):
    docs = gold_docs(textcat_nlp, 12, seed=4)
    for i, doc in enumerate(textcat_nlp.pipe(d.text for d in docs)):
        label = max(doc.cats, key=doc.cats.get)
        if i % 3 == 0:  # gold says the opposite: the model is wrong on docs 0, 3, 6, 9
            label = {"POS": "NEG", "NEG": "POS"}[label]
        docs[i].cats = {"POS": float(label == "POS"), "NEG": float(label == "NEG")}
    correct = PRESETS["wu_ong"].with_changes(name="correct", min_tokens=0, counts=(1, 2))
    long = PRESETS["wu_ong"].with_changes(name="long", min_tokens=7, correct_only=False, counts=(1, 2))
    textcat_nlp.add_pipe("attr_random")
    try:
        report = evaluate(textcat_nlp, docs, protocols=[correct, long], diagnostics=False, n_resamples=20)
        explained = list(textcat_nlp.pipe(docs))  # their cats are predictions: correct_only cannot judge them
        with pytest.raises(ValueError, match="12 of 12 cases of 'random' have no gold decision"):
            evaluate(textcat_nlp, explained, protocols=[correct], diagnostics=False)
        with pytest.raises(ValueError, match="keeps no case of 'random': none has at least 50 removable tokens"):
            evaluate(textcat_nlp, docs, protocols=[long.with_changes(min_tokens=50)], diagnostics=False)
    finally:
        textcat_nlp.remove_pipe("attr_random")
    assert by_metric(report, "random", "correct")["degradation_morf"].n == 8
    morf = next(r for r in report.results if r.protocol == "correct" and r.metric == "degradation_morf")
    assert morf.curve["accuracy"][0] == 1.0
    lengths = [len(d) for d in docs]
    assert by_metric(report, "random", "long")["degradation_morf"].n == sum(n >= 7 for n in lengths)
    assert 0 < sum(n >= 7 for n in lengths) < len(docs)  # both kinds are there
