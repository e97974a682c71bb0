"""The project's report: one Markdown and one self-contained HTML file (plots embedded, no network).

    python scripts/report.py OUTPUT_DIR --evaluation NAME=DIR [--evaluation NAME=DIR …]
        [--gold dev.spacy --explained attributed.spacy …] [--examples 3]

Each ``--evaluation`` is a directory written by ``spacy-attrib evaluate`` (``results.json`` and its PNGs),
named for the report (``sst2``, ``eraser``). Each ``--gold`` is paired, in order, with an ``--explained``
(the same docs, with gold annotations and with the pipeline's predictions and attributions): the report
gives the model's accuracy on them (entity F1 for docs with entities and no cats) and renders the first
``--examples`` docs for every method. Each ``--compare A=B`` puts two of the evaluations side by side (the
same methods on two pipelines, e.g. a plain model and its VMASK-trained twin): one row per protocol, metric
and method that both have, with B − A.
"""

import base64
import html
from pathlib import Path
from typing import Dict, List, Tuple

import spacy
import srsly
import typer
from spacy.tokens import DocBin
from wasabi import msg

from spacy_attrib import iter_attributions, render

BETTER = {True: "↑", False: "↓"}


def load_evaluation(spec: str) -> Tuple[str, Path, Dict]:
    name, _, directory = spec.partition("=")
    path = Path(directory or name) / "results.json"
    if not path.exists():
        msg.fail(f"No results.json in {path.parent}", exits=1)
    return name if directory else path.parent.name, path.parent, srsly.read_json(path)


def metric_table(results: List[Dict]) -> Tuple[List[str], List[List[str]]]:
    """(methods, rows): one row per (protocol, metric), one column per method: value [95 % interval]."""
    from spacy_attrib.evaluation.report import HIGHER_IS_BETTER

    methods = sorted({r["method"] for r in results}, key=lambda m: (m == "random", m))
    cells: Dict[Tuple[str, str], Dict[str, str]] = {}
    for r in results:
        value = "undefined" if r["value"] is None else f"{r['value']:.3f}"
        interval = f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if r["ci_low"] is not None else ""
        cells.setdefault((r["protocol"], r["metric"]), {})[r["method"]] = value + interval
    rows = []
    for (protocol, metric), by_method in cells.items():
        arrow = BETTER.get(HIGHER_IS_BETTER.get(metric), "")
        rows.append([protocol, f"{metric} {arrow}".strip(), str(next(r["n"] for r in results if r["metric"] == metric
                                                                 and r["protocol"] == protocol))]
                    + [by_method.get(m, "") for m in methods])
    return methods, rows


def comparison_table(name_a: str, a: List[Dict], name_b: str, b: List[Dict]) -> Tuple[List[str], List[List[str]]]:
    """(header, rows) of the results both evaluations have: one row per (protocol, metric, method) with the
    value of each and the difference B − A."""
    from spacy_attrib.evaluation.report import HIGHER_IS_BETTER

    def values(results: List[Dict]) -> Dict[Tuple[str, str, str], float]:
        return {(r["protocol"], r["metric"], r["method"]): r["value"] for r in results if r["value"] is not None}

    first, second = values(a), values(b)
    rows = []
    for protocol, metric, method in sorted(set(first) & set(second)):
        arrow = BETTER.get(HIGHER_IS_BETTER.get(metric), "")
        x, y = first[protocol, metric, method], second[protocol, metric, method]
        rows.append([protocol, f"{metric} {arrow}".strip(), method, f"{x:.3f}", f"{y:.3f}", f"{y - x:+.3f}"])
    return ["protocol", "metric", "method", name_a, name_b, f"{name_b} − {name_a}"], rows


def model_quality(gold_path: Path, explained_path: Path) -> Tuple[str, float, int]:
    """(measure, value, n): accuracy over docs with gold cats, else entity F1 (spaCy's scorer)."""
    from spacy.scorer import get_ner_prf
    from spacy.training import Example

    vocab = spacy.blank("en").vocab
    gold = list(DocBin().from_disk(gold_path).get_docs(vocab))
    predicted = list(DocBin().from_disk(explained_path).get_docs(vocab))
    if len(gold) != len(predicted) or any(g.text != p.text for g, p in zip(gold, predicted)):
        msg.fail(f"{gold_path} and {explained_path} do not hold the same docs", exits=1)
    hits = [max(g.cats, key=g.cats.get) == max(p.cats, key=p.cats.get) for g, p in zip(gold, predicted) if g.cats]
    if hits:
        return "accuracy", sum(hits) / len(hits), len(hits)
    return "entity F1", get_ner_prf([Example(p, g) for g, p in zip(gold, predicted)])["ents_f"], len(gold)


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: List[str], rows: List[List[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def main(output: Path = typer.Argument(..., help="Directory for report.md and report.html"),
         evaluation: List[str] = typer.Option(..., "--evaluation", "-e", help="NAME=DIR of a spacy-attrib evaluate run"),
         gold: List[Path] = typer.Option([], help="DocBin with gold annotations (repeatable, paired with --explained)"),
         explained: List[Path] = typer.Option([], help="The same docs, explained (spacy-attrib explain --output)"),
         examples: int = typer.Option(3, help="Docs rendered per method"),
         compare: List[str] = typer.Option([], help="A=B: evaluations A and B (by NAME) side by side (repeatable)")):
    if len(gold) != len(explained):
        msg.fail(f"Each --gold needs its --explained: got {len(gold)} and {len(explained)}", exits=1)
    evaluations = [load_evaluation(spec) for spec in evaluation]
    by_name = {name: data for name, _, data in evaluations}
    pairs = [spec.split("=", 1) for spec in compare]
    malformed = [spec for spec, pair in zip(compare, pairs) if len(pair) != 2]
    unknown = sorted({name for pair in pairs for name in pair} - set(by_name))
    if malformed or unknown:
        msg.fail(f"--compare takes A=B with A and B among the evaluations {sorted(by_name)}: got "
                 f"{malformed + unknown}", exits=1)
    output.mkdir(parents=True, exist_ok=True)
    md = ["# spacy-attrib report", ""]
    body = ["<h1>spacy-attrib report</h1>"]
    for gold_path, explained_path in zip(gold, explained):
        measure, value, n = model_quality(gold_path, explained_path)
        md += [f"Model {measure} on {gold_path.name} (predictions {explained_path.name}): **{value:.3f}** (n = {n})", ""]
        body.append(f"<p>Model {measure} on {html.escape(gold_path.name)} (predictions {html.escape(explained_path.name)}): "
                    f"<b>{value:.3f}</b> (n = {n})</p>")
    for name, directory, data in evaluations:
        methods, rows = metric_table(data["results"])
        header = ["protocol", "metric", "n"] + methods
        pipeline = data["pipeline"]
        intro = (f"{data['n_docs']} docs; pipeline {pipeline['name']} {pipeline.get('version') or ''} "
                 f"({', '.join(pipeline['components'])}); spacy-attrib {data['spacy_attrib_version']}. "
                 "Values with their 95 % bootstrap interval; ↑ higher is better, ↓ lower is better.")
        md += [f"## {name}", "", intro, "", markdown_table(header, rows), ""]
        body += [f"<h2>{html.escape(name)}</h2>", f"<p>{html.escape(intro)}</p>", html_table(header, rows)]
        for png in sorted(directory.glob("*.png")):
            md += [f"![{png.stem}]({png.resolve()})", ""]
            encoded = base64.b64encode(png.read_bytes()).decode("ascii")
            body.append(f'<p><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{encoded}"></p>')
        md += [f"Conventions: {'; '.join(data['conventions'].values())}.", ""]
    for name_a, name_b in pairs:
        header, rows = comparison_table(name_a, by_name[name_a]["results"], name_b, by_name[name_b]["results"])
        md += [f"## {name_b} against {name_a}", "", markdown_table(header, rows), ""]
        body += [f"<h2>{html.escape(name_b)} against {html.escape(name_a)}</h2>", html_table(header, rows)]
    for explained_path in explained if examples else []:
        docs = list(DocBin().from_disk(explained_path).get_docs(spacy.blank("en").vocab))[:examples]
        keys = sorted({a.method for doc in docs for a in iter_attributions(doc)})
        body.append(f"<h2>Examples: {html.escape(explained_path.name)}</h2>")
        for key in keys:
            body.append(render(docs, key=key, jupyter=False))
        md += [f"## Examples: {explained_path.name}", "",
               f"Rendered in report.html: the first {len(docs)} docs under {', '.join(keys)}.", ""]
    (output / "report.md").write_text("\n".join(md), encoding="utf8")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>spacy-attrib report</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}</style></head><body>"
            + "\n".join(body) + "</body></html>")
    (output / "report.html").write_text(page, encoding="utf8")
    msg.good(f"Report: {(output / 'report.html').resolve()} and {(output / 'report.md').resolve()}")


if __name__ == "__main__":
    typer.run(main)
