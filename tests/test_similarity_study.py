"""scripts/similarity_study.py end to end on the tiny BERT and the committed STS-B fixture (GLUE format):
the completeness error falls with n_steps, the shares are shares, the heatmaps are written."""

import json
import sys
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from similarity_study import main, read_pairs  # noqa: E402
import typer  # noqa: E402

FIXTURE = ROOT / "tests" / "data" / "stsb" / "glue" / "dev-pairs.tsv"


def test_reads_glue_and_original_formats(tmp_path):
    glue = read_pairs(FIXTURE, 3)
    assert len(glue) == 3 and all(isinstance(score, float) and 0 <= score <= 5 for _, _, score in glue)
    original = tmp_path / "sts-test.tsv"
    original.write_text("main-captions\tMSRvid\t2012test\t0024\t2.500\tA girl is styling her hair.\t"
                        "A girl is brushing her hair.\n", encoding="utf8")
    assert read_pairs(original, 10) == [("A girl is styling her hair.", "A girl is brushing her hair.", 2.5)]


def test_study_writes_its_table_and_heatmaps(tiny_bert, tmp_path):
    app = typer.Typer()
    app.command()(main)
    result = CliRunner().invoke(app, [str(FIXTURE), str(tmp_path), "--transformer", str(tiny_bert), "--limit", "4",
                                      "--steps", "1,4"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "results.json").read_text(encoding="utf8"))
    first, last = summary["completeness"]
    assert (first["n_steps"], last["n_steps"]) == (1, 4) and last["mean"] < first["mean"]
    shares = summary["concentration"]
    assert 0 < shares["top_1"] <= shares["top_3"] <= shares["top_5"] <= shares["top_10"] <= 1
    assert abs(sum(summary["largest_pairs"]["classes"].values()) - 4 * 5) == 0
    assert all((tmp_path / f"pair_{k}.png").stat().st_size > 1000 for k in range(3))
    assert "<table" in (tmp_path / "heatmaps.html").read_text(encoding="utf8")
    assert "| n_steps |" in (tmp_path / "report.md").read_text(encoding="utf8")
