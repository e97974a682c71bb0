"""The spaCy project's wiring: `spacy project run demo` on the tiny model and a few docs runs every step
(convert → train → attribute → evaluate → report), and the report's table has every method."""

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import srsly
from spacy.util import load_config
from weasel.util import load_project_config

from conftest import CONFIG_METHODS, make_tiny_bert

ROOT = Path(__file__).resolve().parent.parent
METHODS = CONFIG_METHODS


def run_workflow(tmp_path: Path, workflow: str, overrides: Dict[str, object], timeout: int) -> Path:
    """`spacy project run WORKFLOW` on a copy of the project with the tiny BERT as its transformer and
    `overrides` as vars; the copy's directory, after checking the run succeeded."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("project.yml", "configs", "scripts", "assets"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, project / name)
    model = make_tiny_bert(tmp_path / "tiny_bert", max_positions=512)
    command = [sys.executable, "-m", "spacy", "project", "run", workflow, str(project)]
    command += [arg for name, value in {"transformer": model, **overrides}.items()
                for arg in (f"--vars.{name}", str(value))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return project


def test_demo_workflow_runs_end_to_end(tmp_path):
    project = run_workflow(tmp_path, "demo", {"demo_steps": 4, "presets": "eraser", "eraser_limit": 2, "examples": 1},
                           timeout=900)
    eraser_methods = load_project_config(ROOT)["vars"]["eraser_methods"].split(",")
    for name, methods in (("sst2", METHODS), ("eraser", eraser_methods)):
        rows = srsly.read_json(project / "evaluation" / "demo" / name / "results.json")["results"]
        assert {r["method"] for r in rows} == set(methods)
    eraser = srsly.read_json(project / "evaluation" / "demo" / "eraser" / "results.json")["results"]
    assert {r["metric"] for r in eraser} >= {"comprehensiveness", "sufficiency", "token_f1", "iou", "auprc"}
    report = (project / "reports" / "demo" / "report.md").read_text(encoding="utf8")
    header = next(line for line in report.splitlines() if line.startswith("| protocol"))
    assert all(method in header for method in METHODS)
    assert "Model accuracy" in report
    page = (project / "reports" / "demo" / "report.html").read_text(encoding="utf8")
    assert "data:image/png;base64," in page and "http://" not in page and "https://" not in page


def test_configs_declare_one_set_of_attribution_methods():
    """Every config carries the same attribution components, disabled while training, so that a method added
    to the library is added to all of them (and the project's steps find it in every trained pipeline)."""
    declared = {}
    for path in sorted((ROOT / "configs").glob("*.cfg")):
        nlp = load_config(path, interpolate=False)["nlp"]
        methods = [name for name in nlp["pipeline"] if name.startswith("attr_")]
        assert nlp["disabled"] == methods, path.name
        declared[path.name] = methods
    assert len(set(map(tuple, declared.values()))) == 1, declared
    assert next(iter(declared.values())) == [f"attr_{m}" for m in METHODS]


def test_all_workflow_trains_every_config_and_evaluates_what_it_attributes():
    project = load_project_config(ROOT)
    commands = {c["name"]: c for c in project["commands"]}
    steps = project["workflows"]["all"]
    assert [s.split("-")[0] for s in steps] == ["convert", "train", "mlm", "attribute", "evaluate", "report"]
    trained = " ".join(commands["train-all"]["script"])
    assert all(f"configs/{path.name}" in trained for path in (ROOT / "configs").glob("*.cfg"))
    for pipeline in commands["train-all"]["outputs"]:
        assert pipeline in " ".join(commands["attribute-all"]["script"]), pipeline
        assert pipeline in " ".join(commands["evaluate-all"]["script"]), pipeline


def report_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("report_script", ROOT / "scripts" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_measures_accuracy_for_cats_and_entity_f1_for_entities(tmp_path):
    """report.py's model line: accuracy over docs with gold cats; spaCy's entity F1 where there are none."""
    import spacy
    from spacy.tokens import DocBin, Span

    nlp = spacy.blank("en")
    gold, predicted = [nlp("a good film"), nlp("a bad film")], [nlp("a good film"), nlp("a bad film")]
    for doc, label in zip(gold, ("POS", "NEG")):
        doc.cats = {"POS": float(label == "POS"), "NEG": float(label == "NEG")}
    for doc in predicted:
        doc.cats = {"POS": 0.9, "NEG": 0.1}
    ents_gold = [nlp("Ann met Bob in Rome"), nlp("Kim saw Lee")]
    ents_predicted = [nlp("Ann met Bob in Rome"), nlp("Kim saw Lee")]
    ents_gold[0].ents = [Span(ents_gold[0], 0, 1, "PER"), Span(ents_gold[0], 2, 3, "PER"), Span(ents_gold[0], 4, 5, "LOC")]
    ents_gold[1].ents = [Span(ents_gold[1], 0, 1, "PER")]
    ents_predicted[0].ents = [Span(ents_predicted[0], 0, 1, "PER"), Span(ents_predicted[0], 4, 5, "PER")]
    paths = {}
    for name, docs in (("gold", gold), ("predicted", predicted), ("ents_gold", ents_gold), ("ents_predicted", ents_predicted)):
        paths[name] = tmp_path / f"{name}.spacy"
        DocBin(docs=docs).to_disk(paths[name])
    module = report_script()
    assert module.model_quality(paths["gold"], paths["predicted"]) == ("accuracy", 0.5, 2)
    # predicted: 1 of 2 right; gold: 4 entities -> precision 1/2, recall 1/4, F1 1/3
    measure, value, n = module.model_quality(paths["ents_gold"], paths["ents_predicted"])
    assert (measure, n) == ("entity F1", 2) and abs(value - 1 / 3) < 1e-9


def test_report_compares_two_evaluations_on_the_methods_both_have():
    """--compare A=B: one row per (protocol, metric, method) both evaluations have, with B − A."""
    def result(method, value, metric="comprehensiveness"):
        return {"protocol": "eraser", "metric": metric, "method": method, "value": value}

    plain = [result("lime", 0.20), result("occlusion", 0.30), result("random", 0.05), result("lime", None, "sufficiency")]
    vmask = [result("lime", 0.26), result("occlusion", 0.25), result("vmask", 0.40), result("lime", 0.1, "sufficiency")]
    header, rows = report_script().comparison_table("plain", plain, "vmask", vmask)
    assert header == ["protocol", "metric", "method", "plain", "vmask", "vmask − plain"]
    assert rows == [["eraser", "comprehensiveness ↑", "lime", "0.200", "0.260", "+0.060"],
                    ["eraser", "comprehensiveness ↑", "occlusion", "0.300", "0.250", "-0.050"]]


def test_vmask_workflow_trains_both_pipelines_alike_and_compares_them():
    """`vmask`: the plain and the VMASK pipeline on the same data and steps, explained and evaluated alike, the
    report comparing them; the VMASK config is textcat_sst2.cfg's pipeline on the VMASK architecture."""
    project = load_project_config(ROOT)
    commands = {c["name"]: c for c in project["commands"]}
    assert project["workflows"]["vmask"] == ["convert-demo", "train-demo", "train-vmask", "attribute-vmask",
                                             "evaluate-vmask", "report-vmask"]
    plain, vmask = (" ".join(commands[name]["script"]) for name in ("train-demo", "train-vmask"))
    assert "configs/masks/textcat_sst2_vmask.cfg" in vmask
    assert plain.split("--output")[1].split(" ", 2)[2] == vmask.split("--output")[1].split(" ", 2)[2]
    for name in ("attribute-vmask", "evaluate-vmask"):
        on_plain, on_vmask = commands[name]["script"]
        assert "training/demo/model-best" in on_plain and "training/vmask/model-best" in on_vmask
        assert on_vmask.replace("training/vmask", "training/demo").replace(",vmask", "").replace("vmask_", "plain_") \
            .replace("evaluation/vmask/vmask", "evaluation/vmask/plain") == on_plain
    assert "--compare plain=vmask" in commands["report-vmask"]["script"][0]
    config = load_config(ROOT / "configs" / "masks" / "textcat_sst2_vmask.cfg", interpolate=False)
    assert config["components"]["transformer"]["model"]["@architectures"] == "spacy_attrib.VMaskTransformer.v1"
    methods = [name for name in config["nlp"]["pipeline"] if name.startswith("attr_")]
    assert config["nlp"]["disabled"] == methods and methods[-1] == "attr_vmask"
    assert set(methods) <= {f"attr_{m}" for m in METHODS} | {"attr_vmask"}


def test_masks_workflow_is_the_diffmask_and_vmask_workflows_in_one_run():
    project = srsly.read_yaml(ROOT / "project.yml")
    workflows = project["workflows"]
    prefix = ["convert-demo", "train-demo"]
    assert workflows["masks"] == prefix + workflows["diffmask"][2:] + workflows["vmask"][2:]
    assert workflows["diffmask"][:2] == workflows["vmask"][:2] == prefix


@pytest.mark.slow
def test_vmask_workflow_runs_end_to_end(tmp_path):
    """`spacy project run vmask` on the tiny BERT, a few steps and docs: both pipelines trained, explained,
    evaluated, and the report's comparison table has the methods both have."""
    overrides = {"demo_steps": 4, "vmask_presets": "eraser", "examples": 1, "vmask_methods": "occlusion,random",
                 "vmask_settings": ""}
    # 15 minutes measured on 2 cores shared with other jobs (load 13); a few on an idle machine
    project = run_workflow(tmp_path, "vmask", overrides, timeout=1800)
    for name, methods in (("plain", {"occlusion", "random"}), ("vmask", {"occlusion", "random", "vmask"})):
        rows = srsly.read_json(project / "evaluation" / "vmask" / name / "results.json")["results"]
        assert {r["method"] for r in rows} == methods
    report = (project / "reports" / "vmask" / "report.md").read_text(encoding="utf8")
    assert report.count("Model accuracy") == 2 and "## vmask against plain" in report
    compared = report.split("## vmask against plain")[1]
    assert "| eraser | comprehensiveness ↑ | occlusion |" in compared
    assert "↑ | vmask |" not in compared and "↓ | vmask |" not in compared  # attr_vmask: the VMASK pipeline's only
