"""The SST-2 and ERASER Movie Reviews readers, on the small copies in tests/data (see its README)."""

import json
import shutil
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin
from spacy.training import Example

from spacy_attrib.corpora import read_eraser_movies, read_sst2

DATA = Path(__file__).parent / "data"
SST2 = DATA / "sst2" / "dev.tsv"
ERASER = DATA / "eraser-movies"
SHARED_ERASER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eraser-movies"
VAL_IDS = ["negR_857.txt", "negR_875.txt", "posR_825.txt"]


@pytest.fixture(scope="module")
def nlp():
    return spacy.blank("en")


def evidence_texts(directory: Path, split: str, annotation_id: str):
    for line in (directory / f"{split}.jsonl").read_text(encoding="utf8").splitlines():
        annotation = json.loads(line)
        if annotation["annotation_id"] == annotation_id:
            return sorted((e["start_token"], e["text"]) for group in annotation["evidences"] for e in group)
    raise KeyError(annotation_id)


def test_sst2_rows_become_docs_with_gold_cats(nlp):
    docs = read_sst2(SST2, nlp)
    assert len(docs) == 5  # the header row is skipped
    assert [d.cats for d in docs] == [{"POS": 0.0, "NEG": 1.0}] * 3 + [{"POS": 1.0, "NEG": 0.0}] * 2
    assert docs[0].text == "one long string of cliches ."
    assert [t.text for t in docs[0]] == ["one", "long", "string", "of", "cliches", "."]
    assert [d.text for d in read_sst2(SST2, nlp, limit=2)] == [d.text for d in docs[:2]]
    assert read_sst2(SST2, nlp, limit=1, labels=("negative", "positive"))[0].cats == {"positive": 0.0,
                                                                                      "negative": 1.0}


def test_sst2_reads_the_label_column_named_in_the_header_and_files_without_one(nlp, tmp_path):
    swapped = tmp_path / "swapped.tsv"
    swapped.write_text("sentence\tlabel\na fine film .\t1\na dull film .\t0\n", encoding="utf8")
    assert [(d.text, d.cats["POS"]) for d in read_sst2(swapped, nlp)] == [("a fine film .", 1.0),
                                                                          ("a dull film .", 0.0)]
    headless = tmp_path / "headless.tsv"
    headless.write_text("1\ta fine film .\n", encoding="utf8")
    assert read_sst2(headless, nlp)[0].cats == {"POS": 1.0, "NEG": 0.0}


def test_sst2_errors_name_the_path_and_the_row(nlp, tmp_path):
    with pytest.raises(FileNotFoundError, match="SST-2 file not found: .*nowhere.tsv"):
        read_sst2(tmp_path / "nowhere.tsv", nlp)
    with pytest.raises(ValueError, match=r"is a directory; pass one of its .tsv files \(dev.tsv\)"):
        read_sst2(SST2.parent, nlp)
    bad = tmp_path / "bad.tsv"
    bad.write_text("label\tsentence\n1\tfine\n2\tneither\n", encoding="utf8")
    with pytest.raises(ValueError, match="bad.tsv row 3 is not a label"):
        read_sst2(bad, nlp)
    unlabelled = tmp_path / "test.tsv"
    unlabelled.write_text("index\tsentence\n0\ta film\n", encoding="utf8")
    with pytest.raises(ValueError, match="has no 'label' column"):
        read_sst2(unlabelled, nlp)
    with pytest.raises(ValueError, match="limit must be None or at least 0"):
        read_sst2(SST2, nlp, limit=-1)
    with pytest.raises(ValueError, match=r"labels are two names, \(negative, positive\)"):
        read_sst2(SST2, nlp, labels=("NEG", "NEUTRAL", "POS"))


def test_eraser_docs_have_eraser_tokens_gold_cats_and_rationales(nlp):
    docs = read_eraser_movies(ERASER, "val", nlp)
    assert [d.user_data["annotation_id"] for d in docs] == VAL_IDS
    assert [d.cats for d in docs] == [{"POS": 0.0, "NEG": 1.0}] * 2 + [{"POS": 1.0, "NEG": 0.0}]
    assert [len(d.spans["rationale"]) for d in docs] == [4, 7, 3]
    for doc, doc_id in zip(docs, VAL_IDS):
        words = (ERASER / "docs" / doc_id).read_text(encoding="utf8").split()
        assert [t.text for t in doc] == words and doc.text == " ".join(words)
        spans = doc.spans["rationale"]
        assert {s.label_ for s in spans} == {"rationale"}
        assert [(s.start, s.text) for s in spans] == evidence_texts(ERASER, "val", doc_id)
    assert docs[2].spans["rationale"][0].text == "this film features good performances"
    assert [s.text for s in docs[0].sents][1] == "the story has all the originality of a block of wood"
    assert len(list(docs[1].sents)) == 12  # one sentence per line of the review


def test_eraser_test_split_has_all_spans_in_one_group(nlp):
    (doc,) = read_eraser_movies(ERASER, "test", nlp)
    assert doc.cats == {"POS": 0.0, "NEG": 1.0}
    assert [(s.start, s.end) for s in doc.spans["rationale"]] == [(0, 4), (17, 103), (105, 194)]
    assert doc.spans["rationale"][0].text == "yet another brainless teen"


def test_eraser_limit_and_seed_sample_reproducibly(nlp):
    ids = lambda docs: [d.user_data["annotation_id"] for d in docs]  # noqa: E731
    assert ids(read_eraser_movies(ERASER, "val", nlp, limit=2)) == VAL_IDS[:2]
    assert ids(read_eraser_movies(ERASER, "val", nlp, limit=10)) == VAL_IDS
    assert ids(read_eraser_movies(ERASER, "val", nlp, limit=0)) == []
    samples = {seed: ids(read_eraser_movies(ERASER, "val", nlp, limit=2, seed=seed)) for seed in range(6)}
    assert samples[0] == ids(read_eraser_movies(ERASER, "val", nlp, limit=2, seed=0))
    assert all(len(set(s)) == 2 and set(s) <= set(VAL_IDS) for s in samples.values())
    assert len({tuple(s) for s in samples.values()}) > 1  # the seed changes the sample


def copy_with(tmp_path: Path, change) -> Path:
    """A copy of the fixture whose first val annotation's evidences went through `change`."""
    directory = tmp_path / "eraser"
    shutil.copytree(ERASER, directory)
    lines = (directory / "val.jsonl").read_text(encoding="utf8").splitlines()
    first = json.loads(lines[0])
    change(first["evidences"])
    (directory / "val.jsonl").write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n", encoding="utf8")
    return directory


def test_eraser_merges_duplicate_evidence_keeps_overlaps_and_drops_empty_evidence(nlp, tmp_path):
    def duplicate_and_overlap(evidences):
        evidences.append([dict(evidences[0][0])])  # "as cliched as they come", 82:87, again
        evidences.append([dict(evidences[0][0], start_token=84, end_token=88, text="as they come .")])
        evidences.append([dict(evidences[0][0], start_token=90, end_token=90, text="")])  # as in test.jsonl

    doc = read_eraser_movies(copy_with(tmp_path, duplicate_and_overlap), "val", nlp, limit=1)[0]
    assert [(s.start, s.end, s.text) for s in doc.spans["rationale"]] == [
        (30, 38, "a lame - brained big - screen version"),
        (46, 55, "has all the originality of a block of wood"),
        (82, 87, "as cliched as they come"), (84, 88, "as they come ."),
        (114, 121, "just a second - rate action picture")]


def test_eraser_refuses_evidence_that_does_not_match_its_text(nlp, tmp_path):
    def shift(evidences):
        evidences[0][0]["start_token"] += 1

    with pytest.raises(ValueError, match=r"negR_857.txt: tokens 83:87 read 'cliched as they come', but the "
                                         r"evidence text is 'as cliched as they come'"):
        read_eraser_movies(copy_with(tmp_path / "a", shift), "val", nlp)

    def empty_with_text(evidences):
        evidences[0][0]["end_token"] = 82

    with pytest.raises(ValueError, match="tokens 82:82 read '', but the evidence text is 'as cliched"):
        read_eraser_movies(copy_with(tmp_path / "c", empty_with_text), "val", nlp)

    def out_of_range(evidences):
        evidences[0][0].update(start_token=120, end_token=500)

    with pytest.raises(ValueError, match="does not lie in this review's 128 tokens"):
        read_eraser_movies(copy_with(tmp_path / "b", out_of_range), "val", nlp)


def test_eraser_errors_name_the_path_and_the_splits(nlp, tmp_path):
    with pytest.raises(FileNotFoundError, match="directory not found: .*missing"):
        read_eraser_movies(tmp_path / "missing", "val", nlp)
    with pytest.raises(ValueError, match="Unknown ERASER Movie Reviews split 'dev' .*; available: val, test"):
        read_eraser_movies(ERASER, "dev", nlp)
    directory = shutil.copytree(ERASER, tmp_path / "eraser")
    (directory / "docs" / "negR_857.txt").unlink()
    with pytest.raises(FileNotFoundError, match="negR_857.txt"):
        read_eraser_movies(directory, "val", nlp)


def test_docbin_round_trip_keeps_cats_rationales_and_ids(nlp, tmp_path):
    docs = read_eraser_movies(ERASER, "val", nlp) + read_sst2(SST2, nlp)
    DocBin(docs=docs, store_user_data=True).to_disk(tmp_path / "gold.spacy")
    loaded = list(DocBin().from_disk(tmp_path / "gold.spacy").get_docs(nlp.vocab))
    assert [d.cats for d in loaded] == [d.cats for d in docs]
    assert [[(s.start, s.end, s.label_) for s in d.spans.get("rationale", [])] for d in loaded] == \
           [[(s.start, s.end, s.label_) for s in d.spans.get("rationale", [])] for d in docs]
    assert [d.user_data.get("annotation_id") for d in loaded[:3]] == VAL_IDS


def test_registered_readers_yield_examples_for_a_config(nlp):
    config = spacy.util.load_config_from_str(f"""
[corpora]
[corpora.sst2]
@readers = "spacy_attrib.SST2.v1"
path = "{SST2}"
limit = 4
labels = ["NEG", "POS"]
[corpora.eraser]
@readers = "spacy_attrib.EraserMovies.v1"
path = "{ERASER}"
split = "val"
limit = 2
seed = 1
""")
    corpora = spacy.registry.resolve(config)["corpora"]
    sst2 = list(corpora["sst2"](nlp))
    assert len(sst2) == 4 and all(isinstance(e, Example) for e in sst2)
    assert [e.reference.cats["POS"] for e in sst2] == [0.0, 0.0, 0.0, 1.0]
    assert sst2[0].predicted.text == sst2[0].reference.text and not sst2[0].predicted.cats
    eraser = list(corpora["eraser"](nlp))
    expected = read_eraser_movies(ERASER, "val", nlp, limit=2, seed=1)
    assert [e.reference.user_data["annotation_id"] for e in eraser] == [d.user_data["annotation_id"]
                                                                       for d in expected]
    for example, doc in zip(eraser, expected):
        assert example.reference.cats == doc.cats
        assert [s.text for s in example.reference.spans["rationale"]] == [s.text for s in doc.spans["rationale"]]
        assert [t.text for t in example.predicted] == [t.text for t in doc]
        assert not example.predicted.cats and not example.predicted.spans


def test_a_textcat_pipeline_evaluates_on_the_sst2_examples(textcat_nlp):
    examples = list(spacy.registry.readers.get("spacy_attrib.SST2.v1")(SST2)(textcat_nlp))
    scores = textcat_nlp.evaluate(examples)
    assert set(scores["cats_f_per_type"]) == {"POS", "NEG"} and 0.0 <= scores["cats_score"] <= 1.0


@pytest.mark.skipif(not (SHARED_ERASER / "val.jsonl").is_file(), reason="../shared/data/eraser-movies not here")
def test_the_shared_eraser_val_sample_loads_with_every_rationale_matching(nlp):
    docs = read_eraser_movies(SHARED_ERASER, "val", nlp, limit=50, seed=0)
    assert len(docs) == 50 and len({d.user_data["annotation_id"] for d in docs}) == 50
    for doc in docs:
        assert [(s.start, s.text) for s in doc.spans["rationale"]] == evidence_texts(
            SHARED_ERASER, "val", doc.user_data["annotation_id"])
