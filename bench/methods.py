"""Time per doc of every attribution method, as a multiple of one forward pass of the pipeline.

    python bench/methods.py [PIPELINE] [--data FILE] [--n-docs N] [--methods a,b | --own] [--mlm DIR]
                            [--setting attr_x.key=value …] [--out result.json]

One run, one pipeline, the same docs for every row, so the ratios are comparable (absolute times depend on
the machine and its load; the ratios much less). PIPELINE is a trained spaCy pipeline with a transformer and a
head (default: the demo's ``training/demo/model-best``); DATA an SST-2 TSV (default the project's 50-sentence
dev sample) or a DocBin. Rows:

- ``forward``: ``nlp.pipe`` over the docs with the attribution components disabled (transformer + head
  predicting), the unit of the ratios;
- one row per method (default: every ``attr_*`` factory of the library but the learned masks, DiffMask and
  VMASK, which need their own trained pipelines), its component added with default settings and run through its
  own ``pipe`` over the docs the head has annotated. Methods with state fit it first, on the same docs, outside
  the clock (``attr_information_bottleneck``'s statistics: reported as ``fit``). ``attr_input_marginalization``
  reads its masked LM from ``--mlm`` (default: the project's ``training/mlm``); ``--setting attr_x.key=value``
  (repeatable, the value read as JSON, else as a string) changes a method's settings, e.g.
  ``--setting attr_shapley_sampling.n_samples=5``;
- or, with ``--own``, one row per attribution component of the pipeline itself (those named by ``--methods``), as
  it was saved (trained probes, fitted state): the learned masks on ``training/diffmask/model-best`` or
  ``training/vmask/model-best``.

Each row is the best of ``--repeats`` runs (default 2), after a warm-up on two docs.
"""

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import spacy
import typer
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Example

from spacy_attrib.corpora import read_sst2
from spacy_attrib.evaluation import attribution_components

# Not timed by default: the learned masks need pipelines of their own (a trained DiffMask probe, a VMASK-trained
# transformer), which a method added to this pipeline with default settings does not have.
EXCLUDED = {"attr_test_oracle", "attr_diffmask", "attr_vmask"}


def read_docs(nlp: Language, path: Path, n_docs: int) -> List[Doc]:
    if path.suffix == ".spacy":
        return list(DocBin().from_disk(path).get_docs(nlp.vocab))[:n_docs]
    return [nlp.make_doc(doc.text) for doc in read_sst2(path, nlp, limit=n_docs)]


def parse_settings(settings: List[str], mlm: str) -> Dict[str, Dict[str, Any]]:
    """Per factory, the settings given as ``attr_x.key=value`` (value as JSON, else the string)."""
    configs: Dict[str, Dict[str, Any]] = {"attr_input_marginalization": {"mlm": mlm}}
    for item in settings:
        name, _, value = item.partition("=")
        factory, _, key = name.partition(".")
        if not (factory and key and value):
            raise typer.BadParameter(f"expected attr_x.key=value, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        configs.setdefault(factory, {})[key] = parsed
    return configs


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main(pipeline: Path = typer.Argument(Path("training/demo/model-best"), help="A trained pipeline"),
         data: Path = typer.Option(Path("assets/sst2_demo_dev.tsv"), help="SST-2 TSV or DocBin"),
         n_docs: int = typer.Option(50, help="Docs timed"),
         methods: Optional[str] = typer.Option(None, help="Comma-separated factories (with --own: component "
                                                "names; default: every attr_*)"),
         own: bool = typer.Option(False, help="Time the pipeline's own attribution components, as saved"),
         repeats: int = typer.Option(2, help="Runs per row; the best is kept"),
         mlm: str = typer.Option("training/mlm", help="The masked LM of attr_input_marginalization"),
         setting: List[str] = typer.Option([], help="attr_x.key=value: a method's setting (repeatable)"),
         out: Optional[Path] = typer.Option(None, help="Write the table as JSON")):
    nlp = spacy.load(pipeline)
    saved = [nlp.remove_pipe(name) for name, _ in attribution_components(nlp)]
    docs = read_docs(nlp, data, n_docs)
    list(nlp.pipe(docs[:2]))
    forward = best_of(repeats, lambda: list(nlp.pipe([nlp.make_doc(d.text) for d in docs])))
    annotated = list(nlp.pipe([nlp.make_doc(d.text) for d in docs]))
    rows = [{"method": "forward", "seconds": forward, "per_doc": forward / len(docs), "ratio": 1.0}]

    def time_component(method: str, component, fit: Optional[float]) -> None:
        list(component.pipe(annotated[:2]))
        seconds = best_of(repeats, lambda: list(component.pipe(annotated)))
        rows.append({"method": method, "seconds": seconds, "per_doc": seconds / len(docs),
                     "ratio": seconds / forward, "fit": fit})
        print(f"{method:32s} {seconds / len(docs):8.4f} s/doc  {seconds / forward:8.1f} × forward"
              + (f"  (fit {fit:.1f} s)" if fit is not None else ""), flush=True)

    chosen = [m if m.startswith("attr_") else f"attr_{m}" for m in methods.split(",")] if methods else None
    if own:
        for name, component in saved:
            if chosen is None or name in chosen:
                time_component(name, component, None)
    else:
        factories = chosen or sorted(f for f in Language.factories if f.startswith("attr_") and f not in EXCLUDED)
        configs = parse_settings(setting, mlm)
        for factory in factories:
            component = nlp.add_pipe(factory, config=configs.get(factory, {}))
            fit = None
            if getattr(component, "fits_state", False):
                start = time.perf_counter()
                component.initialize(lambda: [Example(d, d) for d in annotated], nlp=nlp)
                fit = time.perf_counter() - start
            time_component(factory, component, fit)
            nlp.remove_pipe(factory)
    wordpieces = sum(len(d._.trf_data.wordpieces.strings[0]) if d._.trf_data else 0 for d in annotated)
    print(f"\n{len(docs)} docs, {wordpieces} wordpieces; forward {forward / len(docs):.4f} s/doc")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"pipeline": str(pipeline), "data": str(data), "n_docs": len(docs),
                                   "rows": rows}, indent=2), encoding="utf8")


if __name__ == "__main__":
    typer.run(main)
