"""The ``spacy-attrib`` command line (also ``python -m spacy_attrib``), in spaCy's style.

    spacy-attrib explain PIPELINE INPUT [--method integrated_gradients,saliency] [--html out.html] [--output docs.spacy]
    spacy-attrib evaluate PIPELINE DATA [--methods …] [--preset eraser,ferret] [--output DIR]
    spacy-attrib explain-corpus PIPELINE INPUT OUTPUT [--engine local|ray] [--workers N] [--resume]

INPUT is a text, a ``.txt`` file (one doc per line), a ``.jsonl`` file (objects with a ``"text"``) or a
DocBin (``.spacy``). DATA is a DocBin with gold annotations (``doc.cats``; human rationales in
``doc.spans["rationale"]``). Methods are the ``attr_*`` factories, named with or without the prefix;
methods the pipeline does not have are added after its head. As in spaCy's own commands, any other
``--section.key value`` overrides the pipeline's config when it is loaded, e.g.
``--components.attr_saliency.reduction l2_squared``. Bad input ends with a one-line error and exit code 1.
"""

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import srsly
import typer
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Example
from wasabi import msg

app = typer.Typer(name="spacy-attrib", add_completion=False, no_args_is_help=True,
                  help="Explain spaCy transformer pipelines and evaluate the explanations.")


def split_list(value: Optional[str]) -> List[str]:
    return [item.strip() for item in value.split(",") if item.strip()] if value else []


MethodSettings = Dict[str, Dict[str, Any]]


def load_pipeline(pipeline: str, overrides: Optional[List[str]] = None) -> Tuple[Language, MethodSettings]:
    """The pipeline loaded with spaCy-style ``--section.key value`` overrides, and the overrides of
    attribution components (``--components.attr_NAME.key``) by component name, which `with_methods` applies:
    to a component the pipeline has (after its `from_disk` restored the saved settings) or to the one it adds."""
    import spacy
    from spacy.cli._util import parse_config_overrides

    try:
        config = parse_config_overrides(list(overrides or []))
    except SystemExit:
        raise UsageError(f"Bad config overrides {overrides}: give --section.key value pairs")
    settings: MethodSettings = {}
    for key in [k for k in config if k.startswith("components.attr_")]:
        _, name, setting = key.split(".", 2)
        settings.setdefault(name, {})[setting] = config.pop(key)
    try:
        return spacy.load(pipeline, config=config), settings
    except OSError as error:
        raise UsageError(f"Cannot load the pipeline {pipeline!r}: {str(error).splitlines()[0]}")


def factory_name(method: str) -> str:
    name = method if method.startswith("attr_") else f"attr_{method}"
    if not Language.has_factory(name):
        known = sorted(f[len("attr_"):] for f in Language.factories if f.startswith("attr_"))
        raise UsageError(f"Unknown method {method!r}; available: {', '.join(known)}")
    return name


def with_methods(nlp: Language, methods: List[str], labels: List[str], settings: Optional[MethodSettings] = None
                 ) -> List[str]:
    """Add the methods the pipeline lacks (after its head); the chosen methods explain `labels` (default:
    their own setting) with `settings` (by component name: `load_pipeline`'s overrides). Returns the result
    keys of the chosen methods."""
    from .evaluation import attribution_components
    from .methods import AttributionComponent

    settings = settings or {}
    present = {pipe.key for _, pipe in nlp.pipeline if isinstance(pipe, AttributionComponent)}
    keys, added = [], set()
    for method in methods:
        factory = factory_name(method)
        key = factory[len("attr_"):]
        if key not in present:
            nlp.add_pipe(factory, name=factory, config=settings.get(factory, {}))
            added.add(factory)
        keys.append(key)
    if not keys:
        keys = [pipe.key for _, pipe in attribution_components(nlp)]
    chosen = attribution_components(nlp, keys)
    unused = sorted(set(settings) - {name for name, _ in chosen})
    if unused:
        raise UsageError(f"Overrides for {unused}, which are not among the chosen methods {keys}")
    setting = labels[0] if labels in (["all"], ["predicted"], ["last"]) else labels
    for name, pipe in chosen:
        if name in settings and name not in added:
            # Made from the factory first, so that spaCy validates the settings as at add_pipe.
            nlp.create_pipe(nlp.get_pipe_meta(name).factory, config=settings[name])
            pipe.update_settings(settings[name])
        if setting:
            pipe.update_settings({"labels": setting})
        pipe.view  # builds the view now: a pipeline without a transformer or an unknown label fails here
    return keys


def read_input(nlp: Language, source: str) -> Iterator[Doc]:
    path = Path(source)
    if path.suffix in (".txt", ".jsonl", ".spacy") or path.exists():
        if not path.exists():
            raise UsageError(f"Input file not found: {path}")
        if path.suffix == ".spacy":
            yield from DocBin().from_disk(path).get_docs(nlp.vocab)
        elif path.suffix == ".jsonl":
            for line in srsly.read_jsonl(path):
                if "text" not in line:
                    raise UsageError(f"{path}: every line needs a 'text' field")
                yield nlp.make_doc(line["text"])
        else:
            for line in path.read_text(encoding="utf8").splitlines():
                if line.strip():
                    yield nlp.make_doc(line)
    else:
        yield nlp.make_doc(source)


# Extra arguments are spaCy-style config overrides (--components.attr_lrp.rule wu_ong).
CONFIG_OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}


class UsageError(Exception):
    """Bad input: reported in one line, exit code 1."""


def one_line(error: Exception) -> str:
    """The first line of an error's message; a config validation error's settings and reasons."""
    from confection import ConfigValidationError

    if isinstance(error, ConfigValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors or [])
        return f"{error.title or 'Config validation error'} ({error.desc or ''}): {problems}".replace(" ()", "")
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    lines = [line for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def fail_cleanly(function):
    """Run a command; bad input (our errors, spaCy's and the library's ValueErrors) ends in one line."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (UsageError, ValueError, KeyError, OSError) as error:
            msg.fail(one_line(error), exits=1)

    return wrapper


@app.command(context_settings=CONFIG_OVERRIDES)
@fail_cleanly
def explain(
    ctx: typer.Context,
    pipeline: str = typer.Argument(..., help="Pipeline: a package name or a directory"),
    source: str = typer.Argument(..., metavar="INPUT", help="A text, a .txt/.jsonl file, or a DocBin (.spacy)"),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Comma-separated methods (default: the pipeline's, else integrated_gradients)"),
    label: Optional[str] = typer.Option(None, "--label", "-l", help="Labels to explain: predicted, all, last or a comma-separated list (default: each method's setting)"),
    html: Optional[Path] = typer.Option(None, "--html", help="Write an HTML page of the explanations"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the explained docs as a DocBin"),
    keep_trf_data: bool = typer.Option(False, "--keep-trf-data", help="Keep doc._.trf_data in --output (large)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print the scores"),
):
    """Explain docs: print each token's score, optionally write HTML and a DocBin (each doc records the
    seconds per doc of each method, which `evaluate --explained` reports)."""
    from .evaluation import attribution_components, explain_corpus
    from .methods import AttributionComponent
    from .render import render

    nlp, settings = load_pipeline(pipeline, ctx.args)
    methods = split_list(method)
    if not methods and not any(isinstance(p, AttributionComponent) for _, p in nlp.pipeline):
        methods = ["integrated_gradients"]
    keys = with_methods(nlp, methods, split_list(label), settings)
    components = [(name, pipe) for name, pipe in attribution_components(nlp) if pipe.key in keys]
    inputs = list(read_input(nlp, source))
    if not inputs:
        raise UsageError("The input holds no docs")
    docs, _, _ = explain_corpus(nlp, inputs, components, progress=len(inputs) >= 50)
    for doc in docs[:0 if quiet else 20]:
        msg.divider(doc.text[:70])
        for key in keys:
            for label_name, attribution in doc._.attributions.get(key, {}).items():
                rows = [(t.text, f"{s:+.4f}") for t, s in zip(doc, attribution.scores)]
                msg.table(rows, header=(f"{key}", f"{label_name}"), divider=True)
    if len(docs) > 20 and not quiet:
        msg.info(f"{len(docs) - 20} more docs not printed")
    if html:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render(docs, key=keys[0], page=True, jupyter=False), encoding="utf8")
        msg.good(f"Wrote {html}")
    if output:
        if not keep_trf_data:
            for doc in docs:
                doc._.trf_data = None  # the transformer's output: ~20× the size of the attributions
        output.parent.mkdir(parents=True, exist_ok=True)
        DocBin(docs=docs, store_user_data=True).to_disk(output)
        msg.good(f"Wrote {len(docs)} docs to {output}")


@app.command(context_settings=CONFIG_OVERRIDES)
@fail_cleanly
def evaluate(
    ctx: typer.Context,
    pipeline: str = typer.Argument(..., help="Pipeline: a package name or a directory"),
    data: Path = typer.Argument(..., help="DocBin (.spacy) with gold cats and optional doc.spans['rationale']"),
    methods: Optional[str] = typer.Option(None, "--methods", "-m", help="Comma-separated methods (default: the pipeline's)"),
    preset: str = typer.Option("eraser", "--preset", "-p", help="Comma-separated protocols: eraser, ferret, atanasova, iba, degradation, wu_ong"),
    output: Path = typer.Option(Path("evaluation"), "--output", "-o", help="Directory for results.json and plots"),
    label: Optional[str] = typer.Option(None, "--label", "-l", help="Labels the methods explain: predicted, all, last or a list (default: each method's setting)"),
    random_floor: bool = typer.Option(True, "--random/--no-random", help="Add attr_random as the floor"),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate the first N docs"),
    n_resamples: int = typer.Option(1000, "--n-resamples", help="Bootstrap resamples"),
    batch_size: int = typer.Option(32, "--batch-size", help="Docs scored together"),
    removal: Optional[str] = typer.Option(None, "--removal", help="Override the presets' removal: delete, mask, unk or pad (ner needs mask, unk or pad)"),
    explained: Optional[Path] = typer.Option(None, "--explained", help="The same docs explained by `explain --output` with this pipeline: their results (and times) are used instead of explaining again"),
):
    """Evaluate methods over a corpus: results.json (value, 95 % interval, n per metric) and PNG plots."""
    from .evaluation import PRESETS, evaluate as run_evaluation

    presets = split_list(preset)
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        raise UsageError(f"Unknown preset(s) {unknown}; available: {', '.join(PRESETS)}")
    protocols = [PRESETS[p].with_changes(removal=removal) if removal else PRESETS[p] for p in presets]
    if not data.exists():
        raise UsageError(f"Data file not found: {data}")
    nlp, settings = load_pipeline(pipeline, ctx.args)
    chosen = split_list(methods)
    if random_floor and chosen and "random" not in chosen:
        chosen.append("random")
    keys = with_methods(nlp, chosen, split_list(label), settings)
    if random_floor and "random" not in keys:
        keys += with_methods(nlp, ["random"], split_list(label))
    docs = list(DocBin().from_disk(data).get_docs(nlp.vocab))[:limit]
    if not docs:
        raise UsageError(f"{data} holds no docs")
    if explained:
        docs = paired_examples(docs, explained, nlp)
    msg.info(f"Evaluating {', '.join(keys)} on {len(docs)} docs under {', '.join(presets)}"
             + (f" (removal: {removal})" if removal else ""))
    report = run_evaluation(nlp, docs, methods=keys, protocols=protocols, n_resamples=n_resamples,
                            batch_size=batch_size, progress=True)
    output.mkdir(parents=True, exist_ok=True)
    report.to_json(output / "results.json")
    plots = report.plot(output)
    msg.table(report.table(), header=("protocol", "metric", "method", "value", "95 % interval", "n"), divider=True)
    msg.good(f"Wrote {output / 'results.json'} and {len(plots)} plots to {output}")


@app.command("explain-corpus", context_settings=CONFIG_OVERRIDES)
@fail_cleanly
def explain_corpus_command(
    ctx: typer.Context,
    pipeline: str = typer.Argument(..., help="Pipeline: a package name or a directory"),
    source: Path = typer.Argument(..., metavar="INPUT", help="A .txt (a doc per line), .jsonl, .tsv (with a header) or DocBin (.spacy) file"),
    output: Path = typer.Argument(..., help="Directory of Parquet part files: one row per (doc, method, target)"),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Comma-separated methods (default: the pipeline's)"),
    label: Optional[str] = typer.Option(None, "--label", "-l", help="Labels to explain: predicted, all, last or a comma-separated list (default: each method's setting)"),
    engine: str = typer.Option("local", "--engine", "-e", help="local (processes on this machine) or ray (Ray Data actors; pip install \"spacy-attrib[ray]\")"),
    workers: int = typer.Option(1, "--workers", "-w", help="Local processes or Ray actors, each with its own copy of the pipeline"),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Docs per nlp.pipe call and per part file"),
    resume: bool = typer.Option(False, "--resume", help="Explain only the docs OUTPUT lacks (after an interrupted run)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Remove OUTPUT's part files first"),
    text_column: str = typer.Option("text", "--text-column", help="The text field of .jsonl and .tsv input"),
    id_column: str = typer.Option("id", "--id-column", help="The id field (default where absent: the line number, or the doc's index in a DocBin)"),
    docbin: bool = typer.Option(False, "--docbin", help="Add each explained doc as a DocBin (without doc._.trf_data) to its first row"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray: join this cluster (auto: the running one); default a local one"),
    gpus_per_actor: Optional[float] = typer.Option(None, "--gpus-per-actor", help="Ray: default 1 where the cluster has GPUs, else 0"),
    cpus_per_actor: Optional[float] = typer.Option(None, "--cpus-per-actor", help="Ray: default 1, less where the actors would hold every CPU"),
):
    """Explain a corpus into Parquet, incrementally: every input id appears once, also after --resume; a
    doc that fails becomes a row with its error. Ends with a summary (docs, failures, time, docs/s)."""
    from .distributed import explain_corpus

    try:
        summary = explain_corpus(pipeline, source, output, methods=split_list(method), labels=split_list(label),
                                 overrides=ctx.args, engine=engine, workers=workers, batch_size=batch_size,
                                 resume=resume, overwrite=overwrite, text_field=text_column, id_field=id_column,
                                 docbin=docbin, address=address, gpus_per_actor=gpus_per_actor,
                                 cpus_per_actor=cpus_per_actor)
    except ImportError as error:
        raise UsageError(str(error))
    msg.table(summary.table(), divider=True)
    for doc_id, error in list(summary.errors.items())[:5]:
        msg.warn(f"doc {doc_id}: {error}")
    msg.good(f"Wrote {summary.rows:,} rows of {summary.explained:,} docs to {output}")


def paired_examples(gold: List[Doc], explained: Path, nlp: Language) -> List[Example]:
    """Gold docs paired, in order, with the same docs explained earlier (read from `explained`)."""
    if not explained.exists():
        raise UsageError(f"Explained docs not found: {explained}")
    predicted = list(DocBin().from_disk(explained).get_docs(nlp.vocab))[:len(gold)]
    mismatch = next((i for i, (p, g) in enumerate(zip(predicted, gold)) if p.text != g.text), None)
    if len(predicted) < len(gold) or mismatch is not None:
        where = f"doc {mismatch} differs" if mismatch is not None else f"it holds {len(predicted)} docs, not {len(gold)}"
        raise UsageError(f"{explained} does not hold the docs of the data in order: {where}")
    return [Example(p, g) for p, g in zip(predicted, gold)]


def main() -> None:
    app()
