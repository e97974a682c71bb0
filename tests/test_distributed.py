"""`spacy_attrib.distributed` on the local engine and `spacy-attrib explain-corpus`: the rows equal a
single-process run, every id is written exactly once (also after an interrupted run is resumed), a doc
that fails is an error row, and bad input is a one-line error. The Ray engine: tests/test_distributed_ray.py."""

import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import numpy
import pyarrow.parquet
import pytest
import spacy
import srsly
from spacy.language import Language
from spacy.tokens import DocBin
from typer.testing import CliRunner

from spacy_attrib.cli import app
from spacy_attrib.distributed import (PartFiles, PipelineSpec, Record, explain_corpus, explain_records, read_output,
                                      read_records)

from conftest import toy_texts

METHODS = ("saliency", "integrated_gradients")
TEXTS = [text for text, _ in toy_texts(12, seed=5)]
Key = Tuple[str, str, str]  # (text, method, target)


def write_jsonl(path: Path, texts: List[str]) -> Path:
    srsly.write_jsonl(path, [{"id": f"doc-{i}", "text": text} for i, text in enumerate(texts)])
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "texts.jsonl", TEXTS)


@pytest.fixture(scope="module")
def reference(textcat_dir) -> Dict[Key, Tuple[List[str], numpy.ndarray, float, float]]:
    """A single-process run, doc by doc: (tokens, scores, output, delta) by (text, method, target)."""
    nlp = spacy.load(textcat_dir)
    for method in METHODS:
        nlp.add_pipe(f"attr_{method}")
    results = {}
    for text in TEXTS:
        doc = nlp(text)
        for method, by_label in doc._.attributions.items():
            for label, attribution in by_label.items():
                results[text, method, label] = ([t.text for t in doc], attribution.scores, attribution.output,
                                                attribution.delta)
    return results


def assert_rows_match(rows: List[dict], reference) -> None:
    """Each (doc, method, target) of the reference once, with its tokens, scores and outputs within 1e-6."""
    counts = Counter((row["text"], row["method"], row["target"]) for row in rows)
    assert set(counts) == set(reference) and set(counts.values()) == {1}
    for row in rows:
        tokens, scores, output, delta = reference[row["text"], row["method"], row["target"]]
        assert row["tokens"] == tokens and row["error"] is None
        numpy.testing.assert_allclose(row["scores"], scores, rtol=0, atol=1e-6)
        assert row["output"] == pytest.approx(output, abs=1e-6)
        assert (row["delta"] is None) == (delta is None)


@pytest.mark.parametrize("workers", [1, 2])
def test_rows_equal_a_single_process_run(textcat_dir, corpus, reference, tmp_path, workers):
    summary = explain_corpus(str(textcat_dir), corpus, tmp_path / "out", methods=METHODS, workers=workers,
                             batch_size=5, progress=False)
    rows = read_output(tmp_path / "out").to_pylist()
    assert_rows_match(rows, reference)
    assert {row["id"] for row in rows} == {f"doc-{i}" for i in range(len(TEXTS))}
    assert len(PartFiles(tmp_path / "out").parts()) == 3  # 12 docs in parts of 5
    assert (summary.docs, summary.skipped, summary.explained, summary.failed) == (12, 0, 12, 0)
    assert summary.rows == len(reference) and summary.docs_per_second > 0


@Language.component("fail_on_boom")
def fail_on_boom(doc):
    if "boom" in doc.text:
        raise ValueError("this doc went boom")
    return doc


def test_a_doc_that_fails_is_an_error_row_and_its_batch_is_kept(textcat_dir, reference):
    nlp = PipelineSpec(str(textcat_dir), METHODS).load()
    nlp.add_pipe("fail_on_boom")
    records = [Record(f"r{i}", text) for i, text in enumerate(TEXTS[:3])]
    records.insert(1, Record("bad", "a boom film ."))
    records.append(Record("undecodable", "a \ufffd film", error="bad encoding: invalid start byte"))
    rows = explain_records(nlp, records)
    by_id = {}
    for row in rows:
        by_id.setdefault(row["id"], []).append(row)
    assert list(by_id) == ["r0", "bad", "r1", "r2", "undecodable"]  # input order
    assert [(r["error"], r["method"], r["scores"]) for r in by_id["bad"]] == [
        ("ValueError: this doc went boom", None, [])]
    assert by_id["undecodable"][0]["error"] == "bad encoding: invalid start byte"
    good = [row for row in rows if row["id"].startswith("r")]
    assert_rows_match(good, {k: v for k, v in reference.items() if k[0] in TEXTS[:3]})


def test_read_records_of_each_format(tmp_path, textcat_dir):
    txt = tmp_path / "a.txt"
    txt.write_bytes(b"first doc\n\nthird \xff line\nfourth doc\n")
    assert [(r.id, r.text, r.error is None) for r in read_records(txt)] == [
        ("1", "first doc", True), ("3", "third \ufffd line", False), ("4", "fourth doc", True)]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"id": 7, "text": "seven"}\n{"text": "no id"}\nnot json\n', encoding="utf8")
    assert [(r.id, r.text, r.error is None) for r in read_records(jsonl)] == [
        ("7", "seven", True), ("2", "no id", True), ("3", "not json", False)]
    tsv = tmp_path / "a.tsv"
    tsv.write_text("label\tsentence\n1\ta fine film .\n0\ta dull one .\n", encoding="utf8")
    assert [(r.id, r.text) for r in read_records(tsv, text_field="sentence")] == [
        ("2", "a fine film ."), ("3", "a dull one .")]
    with pytest.raises(ValueError, match=r"no column 'text' in the header \['label', 'sentence'\]"):
        read_records(tsv)
    nlp = spacy.load(textcat_dir)
    docs = [nlp.make_doc("pre tokenized"), nlp.make_doc("second")]
    docs[1].user_data["id"] = "named"
    DocBin(docs=docs, store_user_data=True).to_disk(tmp_path / "a.spacy")
    records = read_records(tmp_path / "a.spacy")
    assert [(r.id, r.text) for r in records] == [("0", "pre tokenized"), ("named", "second")]
    jsonl.write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n', encoding="utf8")
    with pytest.raises(ValueError, match="the id '1' occurs twice"):
        read_records(jsonl)
    with pytest.raises(ValueError, match="Unknown input format '.csv'"):
        (tmp_path / "a.csv").write_text("x", encoding="utf8")
        read_records(tmp_path / "a.csv")


def test_a_nonempty_output_needs_resume_or_overwrite(textcat_dir, corpus, reference, tmp_path):
    out = tmp_path / "out"
    explain_corpus(str(textcat_dir), corpus, out, methods=METHODS, batch_size=12, progress=False)
    with pytest.raises(ValueError, match="is not empty: --resume .* --overwrite"):
        explain_corpus(str(textcat_dir), corpus, out, methods=METHODS, progress=False)
    summary = explain_corpus(str(textcat_dir), corpus, out, methods=METHODS, resume=True, progress=False)
    assert (summary.skipped, summary.explained, summary.rows) == (12, 0, 0)
    summary = explain_corpus(str(textcat_dir), corpus, out, methods=METHODS, overwrite=True, progress=False)
    assert summary.explained == 12
    assert_rows_match(read_output(out).to_pylist(), reference)
    (out / "notes.txt").write_text("mine", encoding="utf8")
    with pytest.raises(ValueError, match=r"holds other files \(notes.txt\)"):
        explain_corpus(str(textcat_dir), corpus, out, methods=METHODS, overwrite=True, progress=False)
    other = write_jsonl(tmp_path / "other.jsonl", TEXTS[:2])
    (out / "notes.txt").unlink()
    with pytest.raises(ValueError, match="holds ids that are not in"):
        srsly.write_jsonl(other, [{"id": "x", "text": "a film ."}])
        explain_corpus(str(textcat_dir), other, out, methods=METHODS, resume=True, progress=False)


def test_an_interrupted_run_resumed_writes_every_doc_once(textcat_dir, corpus, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write = PartFiles.write

    def write_twice_then_die(self, table):
        if self.written == 2:
            raise KeyboardInterrupt
        write(self, table)

    monkeypatch.setattr(PartFiles, "write", write_twice_then_die)
    with pytest.raises(KeyboardInterrupt):
        explain_corpus(str(textcat_dir), corpus, out, methods=METHODS, batch_size=3, progress=False)
    monkeypatch.setattr(PartFiles, "write", write)
    parts = PartFiles(out).parts()
    assert len(parts) == 2 and len({r["id"] for r in read_output(out).to_pylist()}) == 6
    # What a crash mid-write leaves: a temporary file, and (on a storage failure) a part cut short.
    (out / ".part-dead-000000.parquet.tmp").write_bytes(b"PAR1 half")
    torn = out / "part-torn-000000.parquet"
    torn.write_bytes(parts[1].read_bytes()[:200])
    parts[1].unlink()
    summary = explain_corpus(str(textcat_dir), corpus, out, methods=METHODS, batch_size=3, resume=True,
                             progress=False)
    assert (summary.skipped, summary.explained) == (3, 9)
    assert not torn.exists() and not list(out.glob(".*"))
    assert_rows_match(read_output(out).to_pylist(), reference)


def test_docbin_column_holds_the_explained_doc_without_trf_data(textcat_dir, corpus, tmp_path):
    explain_corpus(str(textcat_dir), corpus, tmp_path / "out", methods=["saliency"], docbin=True, progress=False)
    rows = read_output(tmp_path / "out").to_pylist()
    nlp = spacy.load(textcat_dir)
    for row in rows:
        (doc,) = DocBin().from_bytes(row["docbin"]).get_docs(nlp.vocab)
        assert doc.text == row["text"] and doc._.trf_data is None
        numpy.testing.assert_array_equal(doc._.attributions["saliency"][row["target"]].scores,
                                         numpy.asarray(row["scores"], dtype="float32"))
    schema = pyarrow.parquet.read_schema(PartFiles(tmp_path / "out").parts()[0])
    assert schema.names[:4] == ["id", "text", "method", "target"]


runner = CliRunner()


def test_cli_explains_a_corpus_and_prints_the_summary(textcat_dir, corpus, reference, tmp_path):
    result = runner.invoke(app, ["explain-corpus", str(textcat_dir), str(corpus), str(tmp_path / "out"),
                                 "-m", ",".join(METHODS), "--workers", "2", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "docs/s per worker (2 local)" in result.output and f"of {len(TEXTS)} docs" in result.output
    assert_rows_match(read_output(tmp_path / "out").to_pylist(), reference)


@pytest.mark.parametrize("args,message", [
    (["{pipeline}", "{tmp}/missing.txt", "{tmp}/out", "-m", "saliency"], "Input file not found"),
    (["{pipeline}", "{corpus}", "{tmp}/out"], "The pipeline has no attribution component"),
    (["{pipeline}", "{corpus}", "{tmp}/out", "-m", "saliency", "--engine", "spark"], "Unknown engine 'spark'"),
    (["{pipeline}", "{corpus}", "{tmp}/out", "-m", "saliency", "--engine", "ray"], 'pip install "spacy-attrib[ray]"'),
    (["{pipeline}", "{corpus}", "{tmp}", "-m", "saliency"], "is not empty: --resume"),
])
def test_bad_input_is_one_line_and_exit_code_1(textcat_dir, corpus, tmp_path, monkeypatch, args, message):
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray absent
    (tmp_path / "something.parquet").write_text("", encoding="utf8")
    result = runner.invoke(app, ["explain-corpus"] + [a.format(pipeline=textcat_dir, tmp=tmp_path, corpus=corpus)
                                                      for a in args])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output  # (wasabi wraps it)


def test_the_chosen_methods_run_and_the_pipelines_others_do_not(textcat_dir, corpus, tmp_path):
    nlp = spacy.load(textcat_dir)
    for method in METHODS:
        nlp.add_pipe(f"attr_{method}")
    nlp.to_disk(tmp_path / "with_methods")
    explain_corpus(str(tmp_path / "with_methods"), corpus, tmp_path / "chosen", methods=["saliency"], progress=False)
    assert {row["method"] for row in read_output(tmp_path / "chosen").to_pylist()} == {"saliency"}
    explain_corpus(str(tmp_path / "with_methods"), corpus, tmp_path / "own", progress=False)
    assert {row["method"] for row in read_output(tmp_path / "own").to_pylist()} == set(METHODS)
