"""The conversion scripts `scripts/convert_*.py`, run through their typer command lines on the small
fixtures of `tests/data/` (see its READMEs); the DocBins are read back and checked against the raw files."""

import csv
import importlib.util
import json
import random
import sys
from functools import lru_cache
from pathlib import Path
from typing import List, Tuple

import pytest
import spacy
import typer
from spacy.tokens import Doc, DocBin
from spacy.training.converters import conll_ner_to_docs
from typer.testing import CliRunner

from spacy_attrib.pairs import PAIR_KEY, pair_segments

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
NLP = spacy.blank("en")
AGNEWS_LABELS = ["World", "Sports", "Business", "Sci_Tech"]


@lru_cache(maxsize=None)
def script(name: str):
    # `python scripts/convert_NAME.py` puts scripts/ on the import path (for its shared _convert.py): so do we
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    path = ROOT / "scripts" / f"convert_{name}.py"
    spec = importlib.util.spec_from_file_location(f"convert_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=None)
def app(name: str) -> typer.Typer:
    command_line = typer.Typer(add_completion=False)
    command_line.command()(script(name).main)
    return command_line


def run(name: str, *args):
    return CliRunner().invoke(app(name), [str(arg) for arg in args])


def convert(name: str, source: Path, tmp_path: Path, *options) -> List[Doc]:
    output = tmp_path / "new" / "folder" / "out.spacy"  # the parent is created
    result = run(name, source, output, *options)
    assert result.exit_code == 0, result.output
    assert "✔ Wrote" in result.output
    return list(DocBin().from_disk(output).get_docs(NLP.vocab))


def fails(name: str, *args) -> str:
    result = run(name, *args)
    assert result.exit_code == 1, result.output
    assert "✘" in result.output and "Traceback" not in result.output
    return " ".join(result.output.split())


def gold(doc: Doc) -> str:
    assert sorted(doc.cats.values()) == [0.0] * (len(doc.cats) - 1) + [1.0]
    return max(doc.cats, key=doc.cats.get)


def tsv_rows(path: Path) -> List[List[str]]:
    with path.open(encoding="utf8", newline="") as file:
        return list(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE))


def check_pair(doc: Doc, a: str, b: str, separator: str = "[SEP]") -> None:
    sep = doc.user_data[PAIR_KEY]
    assert doc[sep].text == separator
    assert doc[:sep].text == NLP.make_doc(a.strip()).text
    assert doc[sep + 1:].text == b.strip()
    assert [name for name, _, _ in pair_segments(doc)] == ["a", "separator", "b"]


@pytest.mark.parametrize("name", ["sst2", "eraser", "agnews", "rte", "conll", "stsb"])
def test_missing_input_fails(name, tmp_path):
    output = tmp_path / "out.spacy"
    assert "not found" in fails(name, tmp_path / "missing.txt", output)
    assert not output.exists()


@pytest.mark.parametrize("name,source", [("sst2", "sst2/dev.tsv"), ("eraser", "eraser-movies"),
                                         ("agnews", "agnews/test.csv"), ("rte", "rte/dev.tsv"),
                                         ("conll", "conll2003/train.txt"), ("stsb", "stsb/glue/dev.tsv")])
def test_negative_limit_fails(name, source, tmp_path):
    assert "--limit must be at least 0" in fails(name, DATA / source, tmp_path / "out.spacy", "--limit", "-1")


# SST-2


def test_sst2_cats_follow_the_labels(tmp_path):
    rows = tsv_rows(DATA / "sst2" / "dev.tsv")[1:]
    docs = convert("sst2", DATA / "sst2" / "dev.tsv", tmp_path)
    assert [doc.text for doc in docs] == [sentence for _, sentence in rows]
    assert [gold(doc) for doc in docs] == ["POS" if label == "1" else "NEG" for label, _ in rows]
    assert [gold(doc) for doc in docs].count("POS") == 2
    assert [doc.text for doc in convert("sst2", DATA / "sst2" / "dev.tsv", tmp_path, "--limit", 2)] == \
        [sentence for _, sentence in rows[:2]]


# ERASER Movie Reviews


def test_eraser_cats_rationales_and_ids(tmp_path):
    annotations = [json.loads(line) for line in (DATA / "eraser-movies" / "val.jsonl").read_text().splitlines()]
    docs = convert("eraser", DATA / "eraser-movies", tmp_path, "--split", "val")
    assert [doc.user_data["annotation_id"] for doc in docs] == [a["annotation_id"] for a in annotations]
    assert [gold(doc) for doc in docs] == [a["classification"] for a in annotations]
    for doc, annotation in zip(docs, annotations):
        evidence = {(e["start_token"], e["end_token"], e["text"]) for group in annotation["evidences"] for e in group}
        assert {(s.start, s.end, s.text) for s in doc.spans["rationale"]} == evidence
        assert {s.label_ for s in doc.spans["rationale"]} == {"rationale"}


def test_eraser_seeded_sample_is_reproducible(tmp_path):
    ids = [json.loads(line)["annotation_id"] for line in (DATA / "eraser-movies" / "val.jsonl").read_text().splitlines()]
    sample = [[doc.user_data["annotation_id"] for doc in
               convert("eraser", DATA / "eraser-movies", tmp_path, "--limit", 2, "--seed", 3)] for _ in range(2)]
    assert sample[0] == sample[1] == random.Random(3).sample(ids, 2)
    first = convert("eraser", DATA / "eraser-movies", tmp_path, "--limit", 1)
    assert [doc.user_data["annotation_id"] for doc in first] == ids[:1]


def test_eraser_unknown_split_fails(tmp_path):
    assert "Unknown --split 'dev'" in fails("eraser", DATA / "eraser-movies", tmp_path / "o.spacy", "--split", "dev")
    assert "train" in fails("eraser", DATA / "eraser-movies", tmp_path / "o.spacy", "--split", "train")  # no file


# AG News


def test_agnews_tsv_sample(tmp_path):
    raw = [line.rsplit("\t", 1) for line in (DATA / "agnews" / "train_sample_alps.tsv").read_text().splitlines()]
    docs = convert("agnews", DATA / "agnews" / "train_sample_alps.tsv", tmp_path)
    assert len(docs) == 7
    assert all(list(doc.cats) == AGNEWS_LABELS for doc in docs)
    assert [gold(doc) for doc in docs] == [label.replace("/", "_") for _, label in raw]
    assert raw[0][0] == docs[0].text  # a row without artefacts is kept as it is
    quoted = docs[5].text  # CSV quoting: '" NEW YORK ... HREF=""http:...""'
    assert raw[5][0].startswith('" NEW YORK') and quoted.startswith("NEW YORK (Reuters) - Kimberly-Clark")
    assert 'HREF="http://www.investor.reuters.com/' in quoted and '""' not in quoted
    assert "targeting $400 million to $500 million in cost savings" in quoted
    assert "(\\$828m)" in raw[2][0] and "($828m)" in docs[2].text
    assert "Union and the United States" in docs[6].text
    assert not any("\\" in doc.text or "  " in doc.text or any(t.is_space for t in doc) for doc in docs)


def test_agnews_csv_official(tmp_path):
    with (DATA / "agnews" / "test.csv").open(encoding="utf8", newline="") as file:
        raw = list(csv.reader(file))
    docs = convert("agnews", DATA / "agnews" / "test.csv", tmp_path)
    assert [gold(doc) for doc in docs] == [AGNEWS_LABELS[int(label) - 1] for label, _, _ in raw]
    assert [gold(doc) for doc in docs] == ["Business", "Sci_Tech", "Sci_Tech", "Sports", "World"]
    assert docs[0].text == " ".join(raw[0][2].split())  # 'Turner   Newall' -> 'Turner Newall'
    assert docs[1].text.startswith("SPACE.com - TORONTO, Canada -- A second team of rocketeers")
    assert docs[2].text.startswith('"Sven Jaschan, self-confessed author')
    titled = convert("agnews", DATA / "agnews" / "test.csv", tmp_path, "--title")
    assert all("\\" not in title for _, title, _ in raw)
    assert [doc.text for doc in titled] == [f"{' '.join(title.split())} {doc.text}" for (_, title, _), doc in zip(raw, docs)]
    assert titled[0].text == f"Fears for T N pension after talks {docs[0].text}"
    assert [gold(doc) for doc in titled] == [gold(doc) for doc in docs]


def test_agnews_limit_and_seed(tmp_path):
    source = DATA / "agnews" / "train_sample_alps.tsv"
    every = [doc.text for doc in convert("agnews", source, tmp_path)]
    assert [doc.text for doc in convert("agnews", source, tmp_path, "--limit", 3)] == every[:3]
    samples = [[doc.text for doc in convert("agnews", source, tmp_path, "--limit", 3, "--seed", 7)] for _ in range(2)]
    assert samples[0] == samples[1] == random.Random(7).sample(every, 3)
    assert [doc.text for doc in convert("agnews", source, tmp_path, "--limit", 3, "--seed", 8)] == \
        random.Random(8).sample(every, 3)


def test_agnews_bad_input_fails(tmp_path):
    source = DATA / "agnews" / "train_sample_alps.tsv"
    out = tmp_path / "o.spacy"
    assert "--title needs the .csv format" in fails("agnews", source, out, "--title")
    alone = tmp_path / "alone.tsv"
    alone.write_text(source.read_text())
    assert "classes file not found" in fails("agnews", alone, out)
    assert len(convert("agnews", alone, tmp_path, "--classes", DATA / "agnews" / "classes.txt")) == 7
    other = tmp_path / "agnews.txt"
    other.write_text(source.read_text())
    assert "Unknown AG News format '.txt'" in fails("agnews", other, out, "--classes", DATA / "agnews" / "classes.txt")
    bad = tmp_path / "bad.tsv"
    bad.write_text("A fine description.\tSci/Tech\nAnother description.\tSci_Tech\n")
    assert "bad.tsv line 2 is not a description and a class name" in \
        fails("agnews", bad, out, "--classes", DATA / "agnews" / "classes.txt")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text('"5","Title","Description"\n')
    assert "bad.csv line 1" in fails("agnews", bad_csv, out, "--classes", DATA / "agnews" / "classes.txt")
    assert not out.exists()


# RTE


def test_rte_pairs_and_cats(tmp_path):
    header, *rows = tsv_rows(DATA / "rte" / "dev.tsv")
    assert header == ["index", "sentence1", "sentence2", "label"]
    docs = convert("rte", DATA / "rte" / "dev.tsv", tmp_path)
    assert len(docs) == 5
    for doc, (_, a, b, label) in zip(docs, rows):
        check_pair(doc, a, b)
        assert list(doc.cats) == ["entailment", "not_entailment"] and gold(doc) == label
    assert [gold(doc) for doc in docs] == ["not_entailment", "entailment", "not_entailment", "not_entailment", "entailment"]
    assert docs[0].user_data[PAIR_KEY] == len(NLP.make_doc(rows[0][1]))
    assert len(convert("rte", DATA / "rte" / "dev.tsv", tmp_path, "--limit", 2)) == 2


def test_rte_unmatched_quote_and_separator(tmp_path):
    rows = tsv_rows(DATA / "rte" / "train.tsv")[1:]
    assert rows[1][0] == "2164" and rows[1][1].startswith('"That film')
    docs = convert("rte", DATA / "rte" / "train.tsv", tmp_path, "--separator", "</s>")
    for doc, (_, a, b, label) in zip(docs, rows):
        check_pair(doc, a, b, separator="</s>")
        assert gold(doc) == label
    assert docs[1].text.startswith('"That film') and '</s> The film "WarGames" was shot in 1983.' in docs[1].text


def test_rte_refuses_test_split_and_bad_input(tmp_path):
    out = tmp_path / "o.spacy"
    assert "has no label column" in fails("rte", DATA / "rte" / "test.tsv", out)
    assert "--separator must be one token" in fails("rte", DATA / "rte" / "dev.tsv", out, "--separator", "[ SEP ]")
    bad = tmp_path / "bad.tsv"
    lines = (DATA / "rte" / "dev.tsv").read_text().splitlines()
    bad.write_text("\n".join(lines[:2] + [lines[2].replace("\tentailment", "\tneutral")]) + "\n")
    assert "bad.tsv line 3 is not 4 tab-separated fields" in fails("rte", bad, out)
    assert "no GLUE RTE header" in fails("rte", DATA / "sst2" / "dev.tsv", out)
    assert not out.exists()


# CoNLL-2003


def raw_conll(path: Path) -> List[List[List[str]]]:
    """Sentences of `path`, each a list of its lines' fields."""
    return [[line.split() for line in block.splitlines()] for block in path.read_text().split("\n\n") if block.strip()]


def iob_entities(tags: List[str]) -> List[Tuple[int, int, str]]:
    """(start, end, label) of IOB1 or IOB2 tags, decoded independently of spaCy."""
    entities, start, label = [], None, None
    for i, tag in enumerate(tags + ["O"]):
        if start is not None and not (tag.startswith("I-") and tag[2:] == label):
            entities.append((start, i, label))
            start = None
        if tag.startswith("B-") or (tag.startswith("I-") and start is None):
            start, label = i, tag[2:]
    return entities


def check_conll(docs: List[Doc], sentences: List[List[List[str]]]) -> None:
    """The docs hold exactly `sentences`, in order: tokens, POS tags, sentence starts, entities."""
    fields = [f for sentence in sentences for f in sentence]
    assert [t.text for doc in docs for t in doc] == [f[0] for f in fields]
    assert [t.tag_ for doc in docs for t in doc] == [f[1] for f in fields]
    assert [t.is_sent_start for doc in docs for t in doc] == [i == 0 for s in sentences for i in range(len(s))]
    offsets = [sum(len(d) for d in docs[:i]) for i in range(len(docs))]
    got = [(e.start + o, e.end + o, e.label_) for doc, o in zip(docs, offsets) for e in doc.ents]
    assert got == iob_entities([f[-1] for f in fields])


def test_conll_entities_equal_the_raw_tags(tmp_path):
    sentences = raw_conll(DATA / "conll2003" / "train.txt")
    assert len(sentences) == 12
    docs = convert("conll", DATA / "conll2003" / "train.txt", tmp_path)
    assert [len(list(doc.sents)) for doc in docs] == [10, 2]
    check_conll(docs, sentences)
    assert [(e.text, e.label_) for e in docs[0].ents][:6] == [
        ("EU", "ORG"), ("German", "MISC"), ("British", "MISC"), ("Peter Blackburn", "PER"), ("BRUSSELS", "LOC"),
        ("European Commission", "ORG")]
    assert sum(len(doc.ents) for doc in docs) == sum(f[-1].startswith("B-") for s in sentences for f in s)
    ones = convert("conll", DATA / "conll2003" / "train.txt", tmp_path, "--n-sents", 1, "--limit", 3)
    assert [len(list(doc.sents)) for doc in ones] == [1, 1, 1]
    check_conll(ones, sentences[:3])


def test_conll_docstart_starts_a_document(tmp_path):
    """The copy at ViktorooReps/sp-test-task@b065b44 has a header line and CoNLL-2003's -DOCSTART- lines."""
    sentences = raw_conll(DATA / "conll2003" / "train.txt")
    text = "\n\n".join("\n".join(" ".join(f) for f in s) for s in sentences)
    blocks = text.split("\n\n")
    source = tmp_path / "docstart.txt"
    source.write_text("-TOKEN- -POSTAG- -CHUNKTAG- -NETAG-\n-DOCSTART- -X- -X- O\n\n" + "\n\n".join(blocks[:3]) + "\n\n-DOCSTART- -X- -X- O\n\n"
                      + "\n\n".join(blocks[3:5]) + "\n")
    docs = convert("conll", source, tmp_path)
    assert [len(list(doc.sents)) for doc in docs] == [3, 2]
    check_conll(docs, sentences[:5])
    pairs = convert("conll", source, tmp_path, "--n-sents", 2)
    assert [len(list(doc.sents)) for doc in pairs] == [2, 1, 2]
    check_conll(pairs, sentences[:5])
    # What the script works around: spaCy's converter takes CoNLL-2003's delimiter for a token.
    spacy_docs = conll_ner_to_docs(source.read_text().split("\n", 1)[1], no_print=True)
    assert [t.text for t in next(spacy_docs)][:2] == ["-DOCSTART-", "EU"]


def test_conll_iob1_gives_the_same_entities(tmp_path):
    sentences = raw_conll(DATA / "conll2003" / "train.txt")
    lines = []
    for sentence in sentences:
        previous = "O"
        for fields in sentence:
            tag = fields[-1]
            if tag.startswith("B-") and previous[2:] != tag[2:]:
                tag = "I-" + tag[2:]  # IOB1: B- only between two entities of one type
            lines.append(" ".join(fields[:-1] + [tag]))
            previous = tag
        lines.append("")
    source = tmp_path / "iob1.txt"
    source.write_text("\n".join(lines))
    assert not any(line.split()[-1].startswith("B-") for line in lines if line)
    check_conll(convert("conll", source, tmp_path), sentences)


def test_conll_malformed_lines_fail(tmp_path):
    lines = (DATA / "conll2003" / "train.txt").read_text().splitlines()
    out = tmp_path / "o.spacy"
    for number, line, message in [(3, "German JJ B-MISC", "line 3 has 3 columns, not 4"),
                                  (12, "Blackburn NNP I-NP E-PER", "line 12: NER tag 'E-PER' is not O, B-TYPE or I-TYPE"),
                                  (1, "EU", "line 1 has 1 columns, not 2")]:
        bad = tmp_path / "bad.txt"
        bad.write_text("\n".join(lines[:number - 1] + [line] + lines[number:]))
        assert message in fails("conll", bad, out)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n-DOCSTART- -X- -X- O\n\n")
    assert "has no sentences" in fails("conll", empty, out)
    assert "--n-sents must be at least 0" in fails("conll", DATA / "conll2003" / "train.txt", out, "--n-sents", -2)
    assert not out.exists()


# STS-B


def test_stsb_pairs_with_similarity(tmp_path):
    header, *rows = tsv_rows(DATA / "stsb" / "glue" / "dev.tsv")
    first, second, score = (header.index(c) for c in ("sentence1", "sentence2", "score"))
    docs = convert("stsb", DATA / "stsb" / "glue" / "dev.tsv", tmp_path)
    assert len(docs) == 5
    for doc, row in zip(docs, rows):
        check_pair(doc, row[first], row[second])
        assert doc.user_data["similarity"] == float(row[score]) and not doc.cats
    assert [doc.user_data["similarity"] for doc in docs] == [5.0, 4.75, 5.0, 2.4, 5.0]
    original = convert("stsb", DATA / "stsb" / "original" / "sts-dev.tsv", tmp_path, "--separator", "</s>")
    assert [doc.text.replace("</s>", "[SEP]") for doc in original] == [doc.text for doc in docs]
    assert [doc.user_data for doc in original] == [doc.user_data for doc in docs]
    assert len(convert("stsb", DATA / "stsb" / "glue" / "dev.tsv", tmp_path, "--limit", 2)) == 2


def test_stsb_refuses_glue_test_and_bad_scores(tmp_path):
    out = tmp_path / "o.spacy"
    assert "has no score column" in fails("stsb", DATA / "stsb" / "glue" / "test.tsv", out)
    bad = tmp_path / "bad.tsv"
    lines = (DATA / "stsb" / "original" / "sts-dev.tsv").read_text().splitlines()
    bad.write_text("\n".join(lines[:1] + [lines[1].replace("\t4.750\t", "\t7.5\t")]) + "\n")
    assert "bad.tsv line 2 is not 7 or 9 tab-separated fields with a score in [0, 5]" in fails("stsb", bad, out)
    assert not out.exists()
