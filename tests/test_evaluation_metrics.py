"""The evaluation's metrics against small hand-computed examples: statistics, plausibility, protocols,
faithfulness (with a fake additive classifier) and Atanasova et al.'s diagnostics. No model is loaded."""

import itertools
import math

import numpy
import pytest
import spacy

from spacy_attrib.attribution import Attribution, install_extensions, set_attribution
from spacy_attrib.evaluation.diagnostics import (confidence_features, confidence_indication, dataset_consistency,
                                                 rationale_consistency, similar_pairs)
from spacy_attrib.evaluation.faithfulness import Case, measure, ranking, removals, select
from spacy_attrib.evaluation.plausibility import plausibility, rationale_mask
from spacy_attrib.evaluation.protocols import PRESETS, Protocol, get_protocol
from spacy_attrib.removal import Score
from spacy_attrib.evaluation.statistics import (average_precision, bootstrap, macro_f1, min_max, ranks, spearman,
                                                trapezoid)

install_extensions()
NLP = spacy.blank("en")
FIFTHS = (0.2, 0.4, 0.6, 0.8, 1.0)  # with 5 tokens and "round": k = 1, 2, 3, 4, 5


def attribution(scores, label="POS", method="m", span=None, extras=None) -> Attribution:
    scores = numpy.asarray(scores, dtype="float32")
    n = len(scores)
    return Attribution(method, label, scores, [f"w{i}" for i in range(n)], scores.copy(), [[i] for i in range(n)],
                       0.0, span=span, extras=extras or {})


def case(scores, weights=None, removable=None, reference=None, d=0) -> Case:
    removable = numpy.arange(len(scores)) if removable is None else numpy.asarray(removable)
    # the fake classifiers below read the true token weights from the attribution's extras
    return Case(d, "m", attribution(scores, extras={"weights": weights}), removable, reference=reference)


def additive(c: Case, removed) -> Score:
    """A fake additive classifier: p = 0.5 + the weights of the kept tokens; decides 1 where p ≥ 0.6."""
    p = 0.5 + sum(w for t, w in enumerate(c.attribution.extras["weights"]) if t not in removed)
    return Score(p, int(p >= 0.6))


def by_metric(results):
    return {r.metric: r for r in results}


# -- statistics -----------------------------------------------------------------------------------
def test_average_precision_is_mean_precision_at_relevant_ranks():
    # relevant at ranks 1 and 3: (1/1 + 2/3) / 2
    assert average_precision([1, 0, 1, 0], [.9, .8, .7, .1]) == pytest.approx((1 + 2 / 3) / 2)
    # relevant at ranks 2 and 4: (1/2 + 2/4) / 2
    assert average_precision([0, 1, 0, 1], [.9, .8, .7, .1]) == pytest.approx(0.5)
    assert average_precision([1, 1, 0], [.3, .2, .1]) == pytest.approx(1.0)


def test_average_precision_ties_form_one_threshold():
    # threshold .5 selects {0, 1}: recall 1/2, precision 1/2; threshold .1 adds 2: recall 1, precision 2/3
    # → 0.5 × 0.5 + 0.5 × 2/3
    assert average_precision([1, 0, 1], [.5, .5, .1]) == pytest.approx(0.25 + 1 / 3)


def test_average_precision_is_nan_without_relevant_items():
    assert math.isnan(average_precision([0, 0, 0], [.3, .2, .1]))


def test_ranks_give_ties_their_mean_rank():
    # sorted 10, 20, 20, 30 → ranks 1, (2+3)/2, (2+3)/2, 4
    numpy.testing.assert_array_equal(ranks([20, 10, 30, 20]), [2.5, 1, 4, 2.5])
    numpy.testing.assert_array_equal(ranks([5, 5, 5]), [2, 2, 2])


def test_spearman_monotone_reversed_constant_and_ties():
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 4, 1, 0]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [7, 7, 7]) is None
    assert spearman([1], [2]) is None
    # ranks x = 1, 2, 3, y = 1.5, 1.5, 3; centred (−1, 0, 1)·(−.5, −.5, 1) = 1.5; ‖·‖² = 2 and 1.5
    assert spearman([1, 2, 3], [4, 4, 9]) == pytest.approx(1.5 / math.sqrt(2 * 1.5))


def test_min_max():
    numpy.testing.assert_allclose(min_max([2, 4, 6, 3]), [0, .5, 1, .25])  # (v − 2) / 4
    numpy.testing.assert_array_equal(min_max([3, 3]), [0, 0])


def test_macro_f1_hand_example():
    gold, predicted = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    # class 0: tp 1, fp 1, fn 1 → 2/4; class 1: tp 2, fp 1, fn 0 → 4/5; class 2: tp 0, fn 1 → 0
    assert macro_f1(gold, predicted, 3) == pytest.approx((0.5 + 0.8 + 0) / 3)
    assert macro_f1(gold, predicted, 4) == pytest.approx((0.5 + 0.8 + 0) / 3)  # class 3 absent: not counted


def test_trapezoid():
    assert trapezoid([0, 1, 1], [0, .5, 1]) == pytest.approx(0.25 + 0.5)  # (0+1)/2·.5 + (1+1)/2·.5
    assert trapezoid([1, .5, 0], [0, .1, 1]) == pytest.approx(0.075 + 0.225)  # .75·.1 + .25·.9


def test_bootstrap_interval_contains_value_and_is_deterministic():
    values = numpy.random.default_rng(1).normal(size=40)
    e = bootstrap(values, seed=3)
    assert e.value == pytest.approx(values.mean()) and e.n == 40
    assert e.low < e.value < e.high
    assert bootstrap(values, seed=3) == e
    assert bootstrap(values, seed=4) != e


def test_bootstrap_interval_shrinks_with_sqrt_n():
    rng = numpy.random.default_rng(0)
    small, large = bootstrap(rng.normal(size=20)), bootstrap(rng.normal(size=2000))
    ratio = (large.high - large.low) / (small.high - small.low)
    assert 0.06 < ratio < 0.16  # ≈ sqrt(20 / 2000) = 0.1


def test_bootstrap_covers_the_true_mean():
    rng = numpy.random.default_rng(0)
    covered = 0
    for _ in range(100):
        e = bootstrap(rng.normal(3.0, 1.0, size=50), n_resamples=400, seed=int(rng.integers(1 << 30)))
        covered += e.low <= 3.0 <= e.high
    assert covered >= 85


def test_bootstrap_needs_two_values_for_an_interval():
    assert bootstrap([0.7]) == bootstrap([0.7], seed=9)
    e = bootstrap([0.7])
    assert (e.value, e.low, e.high, e.n) == (pytest.approx(0.7), None, None, 1)
    with pytest.raises(ValueError):
        bootstrap([])


def test_bootstrap_leaves_out_nan_resamples():
    def spread(rows):  # undefined (NaN) where the resample has one distinct value
        return float(numpy.std(rows)) if len(set(rows.tolist())) > 1 else float("nan")

    # resamples of [1, 2]: [1,1] and [2,2] are NaN, [1,2] and [2,1] have std 0.5 → interval [0.5, 0.5]
    e = bootstrap(numpy.array([1.0, 2.0]), spread)
    assert (e.value, e.low, e.high) == (0.5, 0.5, 0.5)
    e = bootstrap(numpy.array([1.0, 1.0]), spread)  # NaN on every resample: no interval
    assert math.isnan(e.value) and e.low is None and e.high is None


# -- plausibility ---------------------------------------------------------------------------------
def test_plausibility_hand_example():
    scores, rationale = [0.1, 0.9, 0.3, 0.8, 0.0], numpy.array([0, 1, 1, 0, 0], dtype=bool)
    result = plausibility(scores, rationale)
    # k = 2: top-2 = {1, 3}; overlap {1} = 1; union {1, 2, 3} = 3
    assert result["token_f1"] == pytest.approx(2 * 1 / (2 + 2))
    assert result["iou"] == pytest.approx(1 / 3)
    # ranking 1 (R), 3, 2 (R), 0, 4: (1/1 + 2/3) / 2
    assert result["auprc"] == pytest.approx((1 + 2 / 3) / 2)
    assert plausibility([0.0, 0.9, 0.8, 0.1, 0.0], rationale) == pytest.approx({"token_f1": 1, "iou": 1, "auprc": 1})


def test_rationale_mask_from_doc_spans():
    doc = NLP("the plot was dull and slow")
    assert rationale_mask(doc) is None
    doc.spans["rationale"] = []
    assert rationale_mask(doc) is None
    doc.spans["rationale"] = [doc[3:4], doc[5:6], doc[3:5]]
    numpy.testing.assert_array_equal(rationale_mask(doc), [0, 0, 0, 1, 1, 1])


# -- protocols ------------------------------------------------------------------------------------
def test_presets_have_their_documented_bins():
    assert PRESETS["eraser"].fractions == (0.01, 0.05, 0.1, 0.2, 0.5)
    assert (PRESETS["eraser"].removal, PRESETS["eraser"].count) == ("delete", "ceil")
    ferret = PRESETS["ferret"]
    assert ferret.fractions == pytest.approx([0.1 * i for i in range(1, 11)])
    assert ferret.positive_only and ferret.skip_repeats
    atanasova = PRESETS["atanasova"]
    assert atanasova.fractions == pytest.approx([0.1 * i for i in range(11)]) and atanasova.fractions[0] == 0.0
    assert atanasova.removal == "mask" and "f1_auc" in atanasova.measures
    iba = PRESETS["iba"]
    assert iba.fractions == pytest.approx([k / 9 for k in range(1, 10)])
    assert (iba.target, iba.removal, iba.measures) == ("gold", "delete", ("degradation",))
    assert [iba.k(f, 9) for f in iba.fractions] == list(range(1, 10))


def test_protocol_counts():
    p = Protocol("p", "delete", (0.5,), "ceil", ("comprehensiveness",))
    assert p.k(0.1, 30) == 3  # 0.1 × 30 = 3.0000000000000004 in floats; ceil must still give 3
    assert p.k(0.01, 50) == 1  # ceil(0.5)
    assert p.k(0.0, 50) == 0
    floor, half_up = p.with_changes(count="floor"), p.with_changes(count="round")
    assert floor.k(0.29, 100) == 29  # 0.29 × 100 = 28.999999999999996 in floats
    assert floor.k(0.1, 5) == 0 and floor.k(0.3, 5) == 1  # floor(0.5), floor(1.5)
    assert half_up.k(0.5, 5) == 3 and half_up.k(0.1, 5) == 1  # 2.5 → 3 (half up, not to even), 0.5 → 1
    assert half_up.k(0.3, 10) == 3 and half_up.k(1.0, 7) == 7


@pytest.mark.parametrize("changes", [{"removal": "drop"}, {"fractions": (0.5, 0.2)}, {"fractions": (0.5, 1.5)},
                                     {"fractions": ()}, {"measures": ("accuracy",)}, {"measures": ()},
                                     {"count": "nearest"}, {"target": "predicted"},
                                     # a left-out bin has no score for the curves or the F1 AUC
                                     {"skip_repeats": True, "measures": ("degradation",)},
                                     {"skip_repeats": True, "measures": ("comprehensiveness", "f1_auc")}])
def test_invalid_protocols_raise(changes):
    with pytest.raises(ValueError):
        PRESETS["eraser"].with_changes(**changes)


def test_wu_ong_preset_is_their_word_deletion():
    wu_ong = PRESETS["wu_ong"]
    assert (wu_ong.removal, wu_ong.measures, wu_ong.fractions) == ("pad", ("degradation",), ())
    assert wu_ong.counts == wu_ong.points == tuple(range(1, 11))
    assert (wu_ong.min_tokens, wu_ong.correct_only, wu_ong.target) == (10, True, "explained")
    assert (wu_ong.axis, wu_ong.axis_label) == ("k", "tokens removed")
    assert (PRESETS["iba"].axis, PRESETS["iba"].axis_label) == ("fraction", "fraction of tokens removed")


def test_counts_select_k_tokens_or_all_of_fewer():
    p = Protocol("p", "pad", (), "round", ("degradation",), counts=(1, 2, 5, 7))
    assert [p.k(k, 10) for k in p.points] == [1, 2, 5, 7]
    assert [p.k(k, 4) for k in p.points] == [1, 2, 4, 4]
    selections = removals(p, case(SCORES))  # most relevant first: 2, 4, 0, 3, 1
    assert selections["top"] == [(2,), (2, 4), (0, 1, 2, 3, 4), (0, 1, 2, 3, 4)]
    assert selections["bottom"] == [(1,), (1, 3), (0, 1, 2, 3, 4), (0, 1, 2, 3, 4)]
    protected = removals(p.with_changes(measures=("sufficiency",)), case(SCORES, removable=[0, 1, 3]))
    assert protected["top"] == [(0,), (0, 3), (0, 1, 3), (0, 1, 3)]
    assert protected["keep"] == [(1, 3), (1,), (), ()]


@pytest.mark.parametrize("changes,message", [
    ({"counts": (1, 2)}, "either fractions or counts"),  # eraser has fractions already
    ({"fractions": (), "counts": ()}, "either fractions or counts"),
    ({"fractions": (), "counts": (2, 1)}, "counts must be increasing"),
    ({"fractions": (), "counts": (1, 1)}, "counts must be increasing"),
    ({"fractions": (), "counts": (-1, 1)}, "counts must be increasing whole numbers"),
    ({"fractions": (), "counts": (0.5, 1)}, "counts must be increasing whole numbers"),
    ({"fractions": (), "counts": (True,)}, "counts must be increasing whole numbers"),
    ({"min_tokens": -1}, "min_tokens must be a whole number"), ({"min_tokens": 2.5}, "min_tokens"),
    ({"correct_only": "yes"}, "correct_only must be True or False")])
def test_invalid_counts_and_filters_raise(changes, message):
    with pytest.raises(ValueError, match=message):
        PRESETS["eraser"].with_changes(**changes)


def test_min_tokens_keeps_cases_with_that_many_removable_tokens():
    cases = [case([0.0] * n, d=d) for d, n in enumerate([3, 10, 9, 12, 10])]
    cases.append(case([0.0] * 12, removable=range(9), d=5))  # 12 tokens, but its target protects 3
    p = PRESETS["wu_ong"].with_changes(correct_only=False)
    assert [c.d for c in select(p, cases, decide=None)] == [1, 3, 4]
    assert [c.d for c in select(p.with_changes(min_tokens=0), cases, decide=None)] == [0, 1, 2, 3, 4, 5]


def test_correct_only_keeps_cases_whose_clean_decision_is_gold():
    cases = [case([0.0] * 10, reference=r, d=d) for d, r in enumerate([0, 1, 1, 0, 1])]
    cases.append(case([0.0] * 4, reference=1, d=5))  # too short: dropped before any decision is asked
    for c in cases:
        c.gold = True
    asked = []

    def decide(chosen):
        asked.append([c.d for c in chosen])
        return [{0: 0, 1: 0, 2: 1, 3: 1, 4: 1}[c.d] for c in chosen]  # wrong on docs 1 and 3

    assert [c.d for c in select(PRESETS["wu_ong"], cases, decide)] == [0, 2, 4]
    assert asked == [[0, 1, 2, 3, 4]]  # once, for every case at once
    cases[2].gold = False  # e.g. a doc given already explained: its reference is the prediction
    with pytest.raises(ValueError, match="1 of 5 cases of 'm' have no gold decision"):
        select(PRESETS["wu_ong"], cases, decide)


def test_unknown_protocol_error_names_the_presets():
    assert get_protocol("eraser") is PRESETS["eraser"]
    with pytest.raises(ValueError, match="nope.*eraser, ferret, atanasova, iba, degradation"):
        get_protocol("nope")


# -- faithfulness: selections ---------------------------------------------------------------------
SCORES = [0.5, -1, 2, 0, 1]  # most relevant first: 2, 4, 0, 3, 1; positive: 2, 4, 0


def test_ranking_orders_by_score():
    p = Protocol("p", "delete", FIFTHS, "round", ("degradation",))
    assert ranking(case(SCORES), p).tolist() == [2, 4, 0, 3, 1]
    assert ranking(case(SCORES), p, most_relevant_first=False).tolist() == [1, 3, 0, 4, 2]
    assert ranking(case(SCORES), p.with_changes(positive_only=True)).tolist() == [2, 4, 0]
    assert ranking(case([1, 0, 1, 0]), p).tolist() == [0, 2, 1, 3]  # ties keep document order


def test_removals_top_keep_bottom_per_fraction():
    p = Protocol("p", "delete", FIFTHS, "round", ("comprehensiveness", "sufficiency", "degradation"))
    selections = removals(p, case(SCORES))
    assert selections["top"] == [(2,), (2, 4), (0, 2, 4), (0, 2, 3, 4), (0, 1, 2, 3, 4)]
    assert selections["keep"] == [(0, 1, 3, 4), (0, 1, 3), (1, 3), (1,), ()]
    assert selections["bottom"] == [(1,), (1, 3), (0, 1, 3), (0, 1, 3, 4), (0, 1, 2, 3, 4)]


def test_ferret_skips_empty_and_repeated_selections_of_positive_tokens():
    selections = removals(PRESETS["ferret"], case(SCORES))
    # floor(f × 5) = 0, 1, 1, 2, 2, 3, 3, 4, 4, 5; only 2, 4, 0 are positive
    assert selections["top"] == [None, (2,), None, (2, 4), None, (0, 2, 4), None, None, None, None]
    assert selections["keep"] == [None, (0, 1, 3, 4), None, (0, 1, 3), None, (1, 3), None, None, None, None]
    nothing_positive = removals(PRESETS["ferret"], case([-1, 0, -2, 0, -0.5]))
    assert nothing_positive["top"] == [None] * 10


def test_protected_target_tokens_are_never_removed():
    c = case([0.1, 0.2, 9.0, 0.3, 0.4], removable=[0, 1, 3, 4])  # the target span (2, 3) is protected
    p = Protocol("p", "mask", (0.0, 0.25, 0.5, 1.0), "ceil", ("comprehensiveness", "sufficiency", "degradation"))
    selections = removals(p, c)
    assert selections["top"] == [(), (4,), (3, 4), (0, 1, 3, 4)]
    assert selections["keep"] == [(0, 1, 3, 4), (0, 1, 3), (0, 1), ()]
    assert selections["bottom"] == [(), (0,), (0, 1), (0, 1, 3, 4)]
    assert all(2 not in s for kind in selections.values() for s in kind)


# -- faithfulness: measures -----------------------------------------------------------------------
WEIGHTS = [0.1, -0.05, 0.2, 0.0, 0.15]  # p(x) = 0.5 + 0.4 = 0.9


def test_aopc_comprehensiveness_and_sufficiency_by_hand():
    p = Protocol("p", "delete", FIFTHS, "round", ("comprehensiveness", "sufficiency"))
    cases = [case(SCORES, WEIGHTS), case(SCORES, [0.0] * 5, d=1)]  # the second: nothing matters, both 0
    results = by_metric(measure(p, "m", cases, additive, n_resamples=200))
    # comprehensiveness = Σ w of the removed top-k: .2, .2+.15, +.1, +0, −.05 = .2, .35, .45, .45, .4
    comprehensiveness = (0.2 + 0.35 + 0.45 + 0.45 + 0.4) / 5  # 0.37
    # sufficiency = 0.4 − Σ w of the kept top-k: .2, .05, −.05, −.05, 0
    sufficiency = (0.2 + 0.05 - 0.05 - 0.05 + 0) / 5  # 0.03
    assert results["comprehensiveness"].estimate.value == pytest.approx(comprehensiveness / 2)
    assert results["sufficiency"].estimate.value == pytest.approx(sufficiency / 2)
    assert results["comprehensiveness"].estimate.n == 2
    assert results["comprehensiveness"].curve["mean"] == pytest.approx([0.1, 0.175, 0.225, 0.225, 0.2])
    assert results["sufficiency"].curve["mean"] == pytest.approx([0.1, 0.025, -0.025, -0.025, 0])
    assert results["comprehensiveness"].curve["fraction"] == list(FIFTHS)


def test_degradation_curves_and_area_between_by_hand():
    p = Protocol("p", "delete", FIFTHS, "round", ("degradation",))
    results = by_metric(measure(p, "m", [case(SCORES, WEIGHTS, reference=1)], additive))
    morf, lerf = results["degradation_morf"], results["degradation_lerf"]
    # MoRF removes 2, 4, 0, 3, 1 in turn: .9, .7, .55, .45, .45, .5
    assert morf.curve["fraction"] == [0.0, *FIFTHS]
    assert morf.curve["mean"] == pytest.approx([0.9, 0.7, 0.55, 0.45, 0.45, 0.5])
    # LeRF removes 1, 3, 0, 4, 2 in turn: .9, .95, .95, .85, .7, .5
    assert lerf.curve["mean"] == pytest.approx([0.9, 0.95, 0.95, 0.85, 0.7, 0.5])
    # trapezoids, width .2: (.8 + .625 + .5 + .45 + .475)·.2 and (.925 + .95 + .9 + .775 + .6)·.2
    assert morf.estimate.value == pytest.approx(0.57)
    assert lerf.estimate.value == pytest.approx(0.83)
    assert results["degradation_area_between"].estimate.value == pytest.approx(0.83 - 0.57)
    # decisions p ≥ .6 against reference 1
    assert morf.curve["accuracy"] == [1, 1, 0, 0, 0, 0]
    assert lerf.curve["accuracy"] == [1, 1, 1, 1, 1, 0]


def test_degradation_over_counts_runs_over_k():
    # the curves of test_degradation_curves_and_area_between_by_hand, at k = 1 … 5 tokens instead of
    # fractions 1/5 … 1 of 5: the same values, the areas 5 × as wide
    p = Protocol("p", "pad", (), "round", ("degradation", "comprehensiveness"), counts=(1, 2, 3, 4, 5))
    results = by_metric(measure(p, "m", [case(SCORES, WEIGHTS, reference=1)], additive))
    morf, lerf = results["degradation_morf"], results["degradation_lerf"]
    assert morf.curve["k"] == [0, 1, 2, 3, 4, 5] and "fraction" not in morf.curve
    assert morf.curve["mean"] == pytest.approx([0.9, 0.7, 0.55, 0.45, 0.45, 0.5])
    assert lerf.curve["mean"] == pytest.approx([0.9, 0.95, 0.95, 0.85, 0.7, 0.5])
    assert morf.estimate.value == pytest.approx(5 * 0.57) and lerf.estimate.value == pytest.approx(5 * 0.83)
    assert results["degradation_area_between"].estimate.value == pytest.approx(5 * (0.83 - 0.57))
    assert morf.curve["accuracy"] == [1, 1, 0, 0, 0, 0]
    assert results["comprehensiveness"].curve["k"] == [1, 2, 3, 4, 5]
    assert results["comprehensiveness"].estimate.value == pytest.approx((0.2 + 0.35 + 0.45 + 0.45 + 0.4) / 5)


def test_oracle_ranking_beats_reversed_ranking():
    rng = numpy.random.default_rng(5)
    weights = [rng.normal(0, 0.1, size=8).tolist() for _ in range(6)]
    p = Protocol("p", "delete", (0.125, 0.25, 0.5, 0.75), "round", ("comprehensiveness", "degradation"))

    def run(sign):
        cases = [case(sign * numpy.array(w), w, d=d) for d, w in enumerate(weights)]
        return by_metric(measure(p, "m", cases, additive, n_resamples=100))

    oracle, reversed_ = run(1), run(-1)
    assert oracle["comprehensiveness"].estimate.value > 0 > reversed_["comprehensiveness"].estimate.value
    assert oracle["degradation_area_between"].estimate.value > 0 > reversed_["degradation_area_between"].estimate.value


def test_f1_auc_with_a_fake_decision():
    references = [0, 1, 0, 1]

    def decide(c: Case, removed) -> Score:
        if len(removed) == 0:
            return Score(1.0, c.reference)
        if len(removed) == 2:  # half masked: case 0 flips to class 1
            return Score(0.5, 1 if c.d == 0 else c.reference)
        return Score(0.0, 1)  # all masked: every case says 1

    p = Protocol("p", "mask", (0.0, 0.5, 1.0), "round", ("f1_auc",))
    cases = [case([4, 3, 2, 1], reference=r, d=d) for d, r in enumerate(references)]
    result = by_metric(measure(p, "m", cases, decide, n_resamples=100))["f1_auc"]
    # f = 0: F1 1; f = .5: predicted 1,1,0,1: class 0 2/3, class 1 4/5 → 11/15;
    # f = 1: class 0 0, class 1 (tp 2, fp 2) 2/3 → 1/3
    assert result.curve["macro_f1"] == pytest.approx([1, 11 / 15, 1 / 3])
    # (1 + 11/15)/2·.5 + (11/15 + 1/3)/2·.5 = 26/60 + 16/60
    assert result.estimate.value == pytest.approx(42 / 60)
    assert result.estimate.n == 4


def test_empty_selection_has_no_comprehensiveness_and_full_keep_no_sufficiency():
    cases = [case(SCORES, WEIGHTS), case(SCORES[::-1], WEIGHTS[::-1], d=1)]
    at_zero = Protocol("zero", "delete", (0.0,), "ceil", ("comprehensiveness",))
    at_one = Protocol("one", "delete", (1.0,), "ceil", ("sufficiency",))
    assert measure(at_zero, "m", cases, additive)[0].estimate.value == pytest.approx(0.0)
    assert measure(at_one, "m", cases, additive)[0].estimate.value == pytest.approx(0.0)


def test_leave_one_out_order_is_the_best_ranking_at_k1():
    def interacting(c: Case, removed) -> Score:
        kept = [t for t in range(5) if t not in removed]
        z = sum([0.3, -0.2, 0.1, 0.4, 0.05][t] for t in kept) + (0.8 if {0, 2} <= set(kept) else 0)
        return Score(1 / (1 + math.exp(-z)), 0)

    full = interacting(None, ()).value
    leave_one_out = [full - interacting(None, (t,)).value for t in range(5)]  # token 0: 0.3 + 0.8 lost
    p = Protocol("p", "delete", (0.2,), "ceil", ("comprehensiveness",))

    def at_k1(scores):
        return measure(p, "m", [case(list(scores))], interacting)[0].estimate.value

    best = at_k1(leave_one_out)
    assert best == pytest.approx(max(leave_one_out))
    assert all(at_k1(scores) <= best + 1e-12 for scores in itertools.permutations(range(5)))


# -- diagnostics ----------------------------------------------------------------------------------
def explained_doc(text, cats, scores_by_label, method="m"):
    doc = NLP(text)
    doc.cats = cats
    for label, scores in scores_by_label.items():
        set_attribution(doc, attribution(scores, label=label, method=method))
    return doc


def test_confidence_features_are_gaps_to_the_other_labels():
    doc = explained_doc("a b c", {"POS": 0.8, "NEG": 0.2}, {"POS": [1, 2, 0], "NEG": [0.5, -0.5, 1]})
    features, confidence = confidence_features(doc, "m")
    numpy.testing.assert_allclose(features, [2, 2, 2])  # Σ POS 3 − Σ NEG 1
    assert confidence == pytest.approx(0.8)
    doc = explained_doc("a b", {"A": 0.3, "B": 0.6, "C": 0.1}, {"A": [1, 0], "B": [2, 1], "C": [-1, 0]})
    features, confidence = confidence_features(doc, "m")
    numpy.testing.assert_allclose(features, [4, 3, 2])  # B 3 − A 1 = 2, B 3 − C −1 = 4: max 4, mean 3, min 2
    assert confidence == pytest.approx(0.6)
    assert confidence_features(explained_doc("a b", {"A": 0.7, "B": 0.3}, {"A": [1, 0]}), "m") is None


def test_confidence_indication_is_exact_for_a_linear_confidence():
    n = 32
    docs = []
    for i in range(n):
        gap = 0.25 * i
        confidence = 0.51 + 0.48 * gap / (0.25 * (n - 1))  # linear in the gap, spread over 5 buckets
        docs.append(explained_doc("a b", {"POS": confidence, "NEG": 1 - confidence},
                                  {"POS": [gap, 0], "NEG": [0, 0]}))
    result = confidence_indication(docs, "m", n_resamples=50)
    assert result["ci_mae"].value < 1e-4 and result["ci_max_error"].value < 1e-4
    assert result["ci_mae"].n == n
    # unrelated confidences are not predicted: clearly larger errors
    rng = numpy.random.default_rng(0)
    for doc in docs:
        c = float(rng.uniform(0.51, 0.99))
        doc.cats = {"POS": c, "NEG": 1 - c}
    assert confidence_indication(docs, "m", n_resamples=50)["ci_mae"].value > 0.05


def test_confidence_indication_needs_ten_explained_docs():
    docs = [explained_doc("a b", {"POS": 0.9, "NEG": 0.1}, {"POS": [i, 0], "NEG": [0, 0]}) for i in range(9)]
    docs += [explained_doc("a b", {"POS": 0.9, "NEG": 0.1}, {"POS": [1, 0]}) for _ in range(3)]  # NEG missing
    assert confidence_indication(docs, "m") is None


def test_consistency_of_a_model_with_itself_is_undefined():
    docs = [explained_doc(f"w{i} film", {"POS": 0.9, "NEG": 0.1}, {"POS": [0.1 * i, 1]}) for i in range(6)]
    activations = numpy.random.default_rng(0).normal(size=(6, 4))
    e = rationale_consistency(docs, docs, activations, activations.copy(), "m")
    assert (e.value, e.low, e.high, e.n) == (None, None, None, 6)
    same = numpy.ones((6, 4))  # every doc with identical activations
    e = dataset_consistency(docs, same, "m", [(0, 1), (2, 3), (4, 5), (0, 5)])
    assert (e.value, e.low, e.high, e.n) == (None, None, None, 4)


def test_rationale_consistency_when_explanations_drift_with_activations():
    base = [explained_doc("a good film", {"POS": 0.9, "NEG": 0.1}, {"POS": [0, 1, 0.5]}) for _ in range(10)]
    drift = 0.1 * numpy.arange(10) ** 2  # the second model's distance from the first, per doc
    other = [explained_doc("a good film", {"POS": 0.9, "NEG": 0.1}, {"POS": [d, 1 + d, 0.5 - d]}) for d in drift]
    activations = numpy.zeros((10, 3))
    e = rationale_consistency(base, other, activations, activations + numpy.sqrt(drift)[:, None], "m",
                              n_resamples=200)
    assert e.value == pytest.approx(1.0) and e.n == 10
    assert e.low > 0.5 and e.high == pytest.approx(1.0)


def test_dataset_consistency_when_explanation_distance_grows_with_activation_distance():
    docs = [explained_doc("good film", {"POS": 0.9, "NEG": 0.1}, {"POS": [0.25 * i, -0.25 * i]}) for i in range(6)]
    pairs = list(itertools.combinations(range(6), 2))
    # per pair: explanation distance mean over {good, film} of |i − j| / 4 (scores exact in float32, so ties
    # stay ties); activation distance mean(|i − j|, 0) = |i − j| / 2: the same order → ρ = 1
    activations = numpy.array([[float(i), 0.0] for i in range(6)])
    e = dataset_consistency(docs, activations, "m", pairs, n_resamples=200)
    assert e.value == pytest.approx(1.0) and e.n == 15
    assert e.low == pytest.approx(1.0) and e.high == pytest.approx(1.0)
    # activation distance falling as the explanation distance grows: ρ = −1
    pairs = [(0, 1), (0, 2), (0, 3), (0, 4)]  # explanation distances 1/4, 2/4, 3/4, 4/4
    activations = numpy.array([[0.0], [4.0], [3.0], [2.0], [1.0], [0.0]])  # distances 4, 3, 2, 1
    assert dataset_consistency(docs, activations, "m", pairs, n_resamples=50).value == pytest.approx(-1.0)


def test_similar_pairs_puts_same_label_high_overlap_pairs_first():
    texts = ["the wonderful film , the great plot", "wonderful film and great acting", "a great plot !",
             "the awful boring mess", "boring , dull mess"]
    labels = ["POS", "POS", "POS", "NEG", "NEG"]
    pairs = similar_pairs([NLP(t) for t in texts], labels, n_pairs=2)
    # same-label overlaps (stop words, punctuation ignored): (0,1) 3, (0,2) 2, (3,4) 2, (1,2) 1
    assert pairs[:2] == [(0, 1), (0, 2)]
    assert len(pairs) == 4
    assert all(labels[i] != labels[j] for i, j in pairs[2:])
    assert similar_pairs([NLP(t) for t in texts], labels, n_pairs=3)[:3] == [(0, 1), (0, 2), (3, 4)]


def test_results_hold_no_nan_for_json():
    from spacy_attrib.evaluation.faithfulness import MetricResult
    from spacy_attrib.evaluation.statistics import Estimate

    row = MetricResult("ferret", "m", "comprehensiveness", Estimate(0.5, None, None, 1),
                       {"fraction": [0.1, 1.0], "mean": [0.2, float("nan")]}).to_dict()
    assert row["curve"]["mean"] == [0.2, None] and row["ci_low"] is None
    import json
    json.dumps(row, allow_nan=False)
