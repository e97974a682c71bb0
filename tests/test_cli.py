"""The `spacy-attrib` command line end to end on the tiny model (typer's CliRunner), with its error paths:
one line and exit code 1, no traceback."""

import subprocess
import sys

import numpy
import pytest
import spacy
import srsly
from spacy.tokens import DocBin
from typer.testing import CliRunner

from spacy_attrib.cli import app

from conftest import gold_docs

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_explain_a_text_prints_scores_and_writes_html_and_docbin(textcat_dir, tmp_path):
    html, docs = tmp_path / "out.html", tmp_path / "docs.spacy"
    result = run("explain", textcat_dir, "this movie is very good !", "--method", "saliency,integrated_gradients",
                 "--html", html, "--output", docs)
    assert result.exit_code == 0, result.output
    assert "saliency" in result.output and "integrated_gradients" in result.output and "good" in result.output
    page = html.read_text(encoding="utf8")
    assert page.startswith("<!DOCTYPE html>") and "good" in page
    nlp = spacy.load(textcat_dir)
    (doc,) = DocBin().from_disk(docs).get_docs(nlp.vocab)
    assert set(doc._.attributions) == {"saliency", "integrated_gradients"}
    assert doc._.trf_data is None  # dropped: it is ~20× the size of the attributions
    assert len(doc._.attributions["saliency"][max(doc.cats, key=doc.cats.get)].scores) == len(doc)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".spacy"])
def test_explain_reads_files(textcat_dir, tmp_path, suffix):
    texts = ["the plot was dull .", "a warm , witty film ."]
    path = tmp_path / f"input{suffix}"
    nlp = spacy.load(textcat_dir)
    if suffix == ".txt":
        path.write_text("\n".join(texts) + "\n", encoding="utf8")
    elif suffix == ".jsonl":
        srsly.write_jsonl(path, [{"text": t} for t in texts])
    else:
        DocBin(docs=[nlp.make_doc(t) for t in texts]).to_disk(path)
    out = tmp_path / "out.spacy"
    result = run("explain", textcat_dir, path, "-m", "gradient_x_input", "-o", out)
    assert result.exit_code == 0, result.output
    docs = list(DocBin().from_disk(out).get_docs(nlp.vocab))
    assert [d.text for d in docs] == texts and all("gradient_x_input" in d._.attributions for d in docs)


def test_evaluate_writes_json_and_plots(textcat_dir, tmp_path):
    nlp = spacy.load(textcat_dir)
    data = tmp_path / "dev.spacy"
    DocBin(docs=gold_docs(nlp, 12, seed=4), store_user_data=True).to_disk(data)
    out = tmp_path / "evaluation"
    result = run("evaluate", textcat_dir, data, "--methods", "gradient_x_input", "--preset", "eraser,degradation",
                 "--output", out, "--n-resamples", 50)
    assert result.exit_code == 0, result.output
    rows = srsly.read_json(out / "results.json")["results"]
    assert {(r["method"], r["metric"]) for r in rows} >= {
        ("gradient_x_input", "comprehensiveness"), ("random", "comprehensiveness"),
        ("gradient_x_input", "degradation_area_between"), ("gradient_x_input", "auprc"),
        ("gradient_x_input", "seconds_per_doc")}
    assert (out / "eraser_aopc.png").stat().st_size > 1000 and (out / "degradation_degradation.png").exists()
    assert "comprehensiveness" in result.output


def test_evaluate_uses_docs_explained_earlier(textcat_dir, tmp_path):
    """`explain --output` then `evaluate --explained`: the same metrics as explaining anew (deterministic
    methods), the time recorded when the docs were explained, and docs that do not match are refused."""
    nlp = spacy.load(textcat_dir)
    data, explained = tmp_path / "dev.spacy", tmp_path / "explained.spacy"
    DocBin(docs=gold_docs(nlp, 10, seed=4), store_user_data=True).to_disk(data)
    assert run("explain", textcat_dir, data, "-m", "occlusion,random", "-q", "-o", explained).exit_code == 0
    recorded = [d.user_data["spacy_attrib"]["seconds"] for d in DocBin().from_disk(explained).get_docs(nlp.vocab)]
    assert all(set(r) == {"occlusion", "random"} and r["occlusion"] > 0 for r in recorded)
    rows = {}
    for name, extra in (("anew", []), ("reused", ["--explained", explained])):
        result = run("evaluate", textcat_dir, data, "-m", "occlusion", "-p", "eraser", "-o", tmp_path / name,
                     "--n-resamples", 20, *extra)
        assert result.exit_code == 0, result.output
        rows[name] = {(r["method"], r["metric"]): r["value"] for r in srsly.read_json(tmp_path / name / "results.json")["results"]}
    assert rows["reused"].keys() == rows["anew"].keys()
    for key, value in rows["anew"].items():
        if key[1] != "seconds_per_doc":
            assert rows["reused"][key] == pytest.approx(value, abs=1e-6), key
    assert rows["reused"]["occlusion", "seconds_per_doc"] == pytest.approx(recorded[0]["occlusion"])
    DocBin(docs=gold_docs(nlp, 10, seed=5), store_user_data=True).to_disk(tmp_path / "other.spacy")
    result = run("evaluate", textcat_dir, tmp_path / "other.spacy", "-m", "occlusion", "--explained", explained)
    assert result.exit_code == 1 and "does not hold the docs of the data in order: doc 0 differs" in result.output


def test_evaluate_removal_overrides_the_presets(textcat_dir, tmp_path):
    """--removal mask: every preset re-scores with [MASK] in place (what ner needs: delete is refused there)."""
    nlp = spacy.load(textcat_dir)
    data = tmp_path / "dev.spacy"
    DocBin(docs=gold_docs(nlp, 6, seed=4), store_user_data=True).to_disk(data)
    out = tmp_path / "evaluation"
    result = run("evaluate", textcat_dir, data, "-m", "saliency", "-p", "eraser,iba", "--removal", "mask",
                 "-o", out, "--n-resamples", 20)
    assert result.exit_code == 0, result.output
    protocols = srsly.read_json(out / "results.json")["protocols"]
    assert {p["name"]: p["removal"] for p in protocols} == {"eraser": "mask", "iba": "mask"}


def test_config_overrides_and_labels_reach_the_pipelines_own_methods(textcat_dir, tmp_path):
    """--components.attr_saliency.reduction overrides the saved setting, as in spaCy's commands; --label
    changes what the pipeline's own components explain."""
    nlp = spacy.load(textcat_dir)
    nlp.add_pipe("attr_saliency")
    nlp.to_disk(tmp_path / "pipeline")
    scores = {}
    for reduction in ("l2", "l2_squared"):
        out = tmp_path / f"{reduction}.spacy"
        result = run("explain", tmp_path / "pipeline", "the plot was dull and slow .", "-o", out, "-q", "-l", "last",
                     "--components.attr_saliency.reduction", reduction)
        assert result.exit_code == 0, result.output
        (doc,) = DocBin().from_disk(out).get_docs(nlp.vocab)
        assert list(doc._.attributions["saliency"]) == [nlp.get_pipe("textcat").labels[-1]]
        scores[reduction] = next(iter(doc._.attributions["saliency"].values())).wordpiece_scores
    numpy.testing.assert_allclose(scores["l2_squared"], scores["l2"] ** 2, rtol=1e-5)
    bad = run("explain", tmp_path / "pipeline", "some text", "--components.attr_saliency.reduction", "cubic")
    assert bad.exit_code == 1 and "reduction" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize("args,message", [
    (["explain", "{pipeline}", "{tmp}/missing.txt"], "Input file not found"),
    (["explain", "{tmp}/no_pipeline", "some text"], "Cannot load the pipeline"),
    (["explain", "{blank}", "some text", "-m", "saliency"], "no spacy-transformers 'transformer'"),
    (["explain", "{pipeline}", "some text", "-m", "lime_or_so"], "Unknown method 'lime_or_so'"),
    (["explain", "{pipeline}", "some text", "-l", "MAYBE"], "Unknown label(s) ['MAYBE']"),
    (["evaluate", "{pipeline}", "{tmp}/missing.spacy"], "Data file not found"),
    (["evaluate", "{pipeline}", "{tmp}/missing.spacy", "--preset", "aopc"], "Unknown preset(s) ['aopc']"),
    (["evaluate", "{pipeline}", "{tmp}/missing.spacy", "--removal", "erase"], "removal must be one of"),
])
def test_bad_input_is_one_line_and_exit_code_1(textcat_dir, tmp_path, args, message):
    blank = tmp_path / "blank"
    nlp = spacy.blank("en")
    textcat = nlp.add_pipe("textcat")
    for label in ("POS", "NEG"):
        textcat.add_label(label)
    nlp.initialize()
    nlp.to_disk(blank)
    filled = [a.format(pipeline=textcat_dir, tmp=tmp_path, blank=blank) for a in args]
    result = runner.invoke(app, filled)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "spacy_attrib", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "explain" in result.stdout and "evaluate" in result.stdout
