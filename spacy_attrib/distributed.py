"""Explain a whole corpus and write the results as Parquet rows, on local processes or on Ray Data actors.

    from spacy_attrib.distributed import explain_corpus
    summary = explain_corpus("training/demo/model-best", "texts.jsonl", "explained/", workers=2)

INPUT is a ``.txt`` file (one doc per line; its id is the line number), a ``.jsonl`` file (objects with a
text field and, optionally, an id field; else the line number), a ``.tsv`` file with a header row (the
same fields as columns, e.g. the GLUE files: ``--text-column sentence``) or a DocBin (``.spacy``; the id is
``doc.user_data[id_field]`` where set, else the doc's index). OUTPUT is a directory of Parquet part files,
one row per (doc, method, target) with the columns of `SCHEMA`; a doc without targets has one row with a
null method, and a doc that fails (a bad encoding, a method that refuses it) one row with the reason in
``error``, so every input id appears in OUTPUT exactly once per target, and at least once.

Exactly once, also across interruptions: every part file is written under a temporary name and renamed
when complete, so OUTPUT only ever holds whole files; ``resume=True`` reads the ids of the files there and
explains only the others (an unreadable file, e.g. from a storage crash, is removed and its docs explained
again). Without ``resume`` or ``overwrite`` a non-empty OUTPUT is refused: a rerun would add every doc
again.

Engines (both call `explain_records`, so they write the same rows):

- ``local`` (default): chunks of ``batch_size`` docs through ``nlp.pipe``, in this process (``workers=1``)
  or in a pool of ``workers`` processes forked with the loaded pipeline, as ``nlp.pipe(n_process)`` forks
  (one call per chunk, so that a failing doc or a dead worker costs only its chunk: a worker that dies is
  replaced and its chunk run again).
- ``ray``: a pool of Ray Data actors (``ray.data.ActorPoolStrategy``), each loading the pipeline once from
  its path, one GPU each where the cluster has GPUs; ``address`` joins a running cluster (``"auto"``), else a
  local one is started. An exception that escapes an actor's batch is retried
  (``DataContext.actor_task_retry_on_errors``) and a dead actor restarted, so the batch is explained once.
  The results stream back to this process, which writes the part files (scores are small next to the
  transformer's work). Ray is an optional extra: ``pip install "spacy-attrib[ray]"``.

Measured facts behind the Ray settings (Ray 2.60, a 2-core machine) are in the design note
``scale-out.md``: actors that take every CPU deadlock Ray Data (ray-project/ray#44687), so the actors here
are given at most all CPUs but one.
"""

import importlib.util
import math
import os
import time
import uuid
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Literal, Optional, Sequence, Set, Tuple

import pyarrow
import pyarrow.parquet
import srsly
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from tqdm import tqdm

from .attribution import USER_DATA_KEY, iter_attributions

SCHEMA = pyarrow.schema([
    ("id", pyarrow.string()),
    ("text", pyarrow.string()),
    ("method", pyarrow.string()),          # the result key in doc._.attributions; null: no result
    ("target", pyarrow.string()),          # the explained label
    ("token", pyarrow.int32()),            # per-token targets (tagger): the token's index
    ("span_start", pyarrow.int32()),       # span targets (ner, spancat): the span's token offsets
    ("span_end", pyarrow.int32()),
    ("tokens", pyarrow.list_(pyarrow.string())),
    ("scores", pyarrow.list_(pyarrow.float32())),  # one per token
    ("output", pyarrow.float64()),         # the attributed output at the input, e.g. a log-probability
    ("delta", pyarrow.float64()),          # the completeness gap, where the method has one
    ("error", pyarrow.string()),           # why the doc could not be explained; null otherwise
    ("docbin", pyarrow.binary()),          # with docbin=True: the explained doc (first row of each doc)
])
RAY_HINT = 'The ray engine needs Ray: pip install "spacy-attrib[ray]"'
# An error message in a row is cut here: a method's refusal can quote a whole doc.
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class PipelineSpec:
    """How every worker loads the same pipeline: its path or package name, the attribution methods to run
    (added after the head where the pipeline lacks them; empty: the pipeline's own), the labels they explain
    (empty: each method's setting) and spaCy-style ``--section.key value`` config overrides. A spec, not a
    loaded `Language`, travels to the workers: each loads the pipeline once."""

    pipeline: str
    methods: Tuple[str, ...] = ()
    labels: Tuple[str, ...] = ()
    overrides: Tuple[str, ...] = ()

    def load(self) -> Language:
        from .cli import load_pipeline, with_methods
        from .methods import AttributionComponent

        nlp, settings = load_pipeline(self.pipeline, list(self.overrides))
        # A ValueError that names the pipeline's components where it has no attribution component.
        keys = with_methods(nlp, list(self.methods), list(self.labels), settings)
        for name, pipe in nlp.pipeline:
            if isinstance(pipe, AttributionComponent) and pipe.key not in keys:
                nlp.disable_pipe(name)  # a method of the pipeline that was not chosen
        return nlp


@dataclass(frozen=True)
class Record:
    """One input doc: its id and text; `doc` holds the serialized doc of a DocBin input (its own
    tokenization), `error` why it cannot be read (a bad encoding)."""

    id: str
    text: str
    doc: Optional[bytes] = None
    error: Optional[str] = None


def read_records(path: Path, text_field: str = "text", id_field: str = "id") -> List[Record]:
    """The docs of a ``.txt``, ``.jsonl``, ``.tsv`` or ``.spacy`` file, each with a unique id (a ValueError
    names a repeated one). A line that is not UTF-8 (or not JSON) becomes a record with an `error`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Input file not found: {path}")
    if path.suffix == ".spacy":
        from spacy.vocab import Vocab

        docs = DocBin().from_disk(path).get_docs(Vocab())
        records = [Record(str(doc.user_data.get(id_field, i)), doc.text, doc.to_bytes()) for i, doc in enumerate(docs)]
    elif path.suffix in (".txt", ".jsonl", ".tsv"):
        records = list(_read_lines(path, text_field, id_field))
    else:
        raise ValueError(f"Unknown input format {path.suffix!r} ({path}): give a .txt, .jsonl, .tsv or .spacy file")
    seen: Set[str] = set()
    for record in records:
        if record.id in seen:
            raise ValueError(f"{path}: the id {record.id!r} occurs twice; every doc needs its own id")
        seen.add(record.id)
    return records


def _read_lines(path: Path, text_field: str, id_field: str) -> Iterator[Record]:
    columns: Optional[List[str]] = None
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf8")
        except UnicodeDecodeError as error:
            yield Record(str(number), raw.decode("utf8", errors="replace"), error=f"bad encoding: {error}")
            continue
        if not line.strip():
            continue
        if path.suffix == ".txt":
            yield Record(str(number), line)
            continue
        if path.suffix == ".tsv" and columns is None:
            columns = line.split("\t")
            if text_field not in columns:
                raise ValueError(f"{path}: no column {text_field!r} in the header {columns}; choose one with "
                                 "--text-column")
            continue
        if columns is not None:
            fields: Any = dict(zip(columns, line.split("\t")))
        else:
            try:
                fields = srsly.json_loads(line)
            except ValueError as error:
                yield Record(str(number), line, error=f"not JSON: {error}")
                continue
        if not isinstance(fields, dict) or not isinstance(fields.get(text_field), str):
            raise ValueError(f"{path}, line {number}: every line needs a text field {text_field!r}")
        yield Record(str(fields.get(id_field, number)), fields[text_field])


def make_doc(nlp: Language, record: Record) -> Doc:
    """The record's doc, tokenized by the pipeline (or as the DocBin had it, earlier results dropped)."""
    if record.doc is None:
        return nlp.make_doc(record.text)
    doc = Doc(nlp.vocab).from_bytes(record.doc)
    doc.user_data.pop(USER_DATA_KEY, None)
    return doc


def explain_records(nlp: Language, records: Sequence[Record], docbin: bool = False) -> List[Dict[str, Any]]:
    """The rows of `records` (`SCHEMA`, in input order): the batch through ``nlp.pipe``; where that fails,
    doc by doc, so a doc that fails becomes an error row instead of taking its batch with it."""
    readable = [record for record in records if record.error is None]
    try:
        explained: Dict[str, Tuple[Optional[Doc], Optional[str]]] = {
            record.id: (doc, None) for record, doc in zip(readable, nlp.pipe(make_doc(nlp, r) for r in readable))}
    except Exception:
        explained = {}
        for record in readable:
            try:
                explained[record.id] = (nlp(make_doc(nlp, record)), None)
            except Exception as error:
                explained[record.id] = (None, f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS])
    rows = []
    for record in records:
        doc, error = explained.get(record.id, (None, record.error))
        rows.extend(rows_of(record, doc, error, docbin))
    return rows


def rows_of(record: Record, doc: Optional[Doc], error: Optional[str], docbin: bool) -> List[Dict[str, Any]]:
    """One row per result on `doc` (one with a null method where it has none, one with `error` where there
    is no doc)."""
    empty = {name: None for name in SCHEMA.names}
    if doc is None:
        return [{**empty, "id": record.id, "text": record.text, "tokens": [], "scores": [], "error": error}]
    tokens = [token.text for token in doc]
    rows = [{**empty, "id": record.id, "text": doc.text, "method": a.method, "target": a.label, "token": a.token,
             "span_start": None if a.span is None else a.span[0], "span_end": None if a.span is None else a.span[1],
             "tokens": tokens, "scores": [float(s) for s in a.scores], "output": float(a.output),
             "delta": None if a.delta is None else float(a.delta)} for a in iter_attributions(doc)]
    rows = rows or [{**empty, "id": record.id, "text": doc.text, "tokens": tokens, "scores": []}]
    if docbin:
        doc._.trf_data = None  # the transformer's output: most of a doc's bytes, and not an explanation
        rows[0]["docbin"] = DocBin(docs=[doc], store_user_data=True).to_bytes()
    return rows


def rows_table(rows: List[Dict[str, Any]]) -> pyarrow.Table:
    return pyarrow.Table.from_pylist(rows, schema=SCHEMA)


class PartFiles:
    """OUTPUT, a directory of Parquet part files that are each written whole: under a hidden temporary name,
    then renamed (atomic on one file system), so an interrupted run leaves only complete files."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.run = uuid.uuid4().hex[:8]
        self.written = 0

    def parts(self) -> List[Path]:
        return sorted(self.path.glob("part-*.parquet")) if self.path.is_dir() else []

    def prepare(self, resume: bool, overwrite: bool) -> Set[str]:
        """Make OUTPUT ready; the ids it already holds (resume), else none. A non-empty OUTPUT needs `resume`
        or `overwrite` (which removes the part files, and refuses a directory with other files)."""
        if resume and overwrite:
            raise ValueError("Give --resume or --overwrite, not both")
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"OUTPUT must be a directory, but {self.path} is a file")
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob(".part-*.tmp"):
            stale.unlink()  # an interrupted write
        entries = sorted(self.path.iterdir())
        if entries and not (resume or overwrite):
            raise ValueError(f"{self.path} is not empty: --resume to explain only the docs it lacks, --overwrite "
                             "to start again (a plain rerun would write every doc twice)")
        parts = self.parts()
        foreign = sorted({entry.name for entry in entries} - {part.name for part in parts})
        if foreign and overwrite:
            raise ValueError(f"--overwrite removes part files only, but {self.path} holds other files "
                             f"({', '.join(foreign[:3])}): choose another OUTPUT")
        done: Set[str] = set()
        for part in parts:
            if overwrite:
                part.unlink()
                continue
            try:
                done.update(pyarrow.parquet.read_table(part, columns=["id"]).column("id").to_pylist())
            except (pyarrow.ArrowInvalid, OSError):
                part.unlink()  # not a whole Parquet file (renamed files are whole): its docs are explained again
        return done

    def write(self, table: pyarrow.Table) -> None:
        name = f"part-{self.run}-{self.written:06d}.parquet"
        temporary = self.path / f".{name}.tmp"
        pyarrow.parquet.write_table(table, temporary)
        os.replace(temporary, self.path / name)
        self.written += 1


def read_output(path: Path) -> pyarrow.Table:
    """Every row of an OUTPUT directory, in `SCHEMA`."""
    parts = PartFiles(path).parts()
    return pyarrow.concat_tables([pyarrow.parquet.read_table(p, schema=SCHEMA) for p in parts]) if parts \
        else SCHEMA.empty_table()


@dataclass
class CorpusSummary:
    """What a run did: docs in INPUT, already in OUTPUT before it (resume), explained now, of those the docs
    with an error row, rows written, wall seconds, workers."""

    docs: int
    skipped: int
    explained: int
    failed: int
    rows: int
    seconds: float
    workers: int
    engine: str
    errors: Dict[str, str] = field(default_factory=dict)

    @property
    def docs_per_second(self) -> float:
        return self.explained / self.seconds if self.seconds else 0.0

    def table(self) -> List[Tuple[str, str]]:
        return [("docs in input", f"{self.docs:,}"), ("already in output", f"{self.skipped:,}"),
                ("explained now", f"{self.explained:,}"), ("failed (error rows)", f"{self.failed:,}"),
                ("rows written", f"{self.rows:,}"), ("wall time", f"{self.seconds:.1f} s"),
                ("docs/s", f"{self.docs_per_second:.2f}"),
                (f"docs/s per worker ({self.workers} {self.engine})", f"{self.docs_per_second / self.workers:.2f}")]


def chunks(records: Sequence[Record], size: int) -> List[List[Record]]:
    return [list(records[start:start + size]) for start in range(0, len(records), size)]


def explain_corpus(pipeline: str, input: Path, output: Path, *, methods: Sequence[str] = (),
                   labels: Sequence[str] = (), overrides: Sequence[str] = (),
                   engine: Literal["local", "ray"] = "local", workers: int = 1, batch_size: int = 64,
                   resume: bool = False, overwrite: bool = False, text_field: str = "text", id_field: str = "id",
                   docbin: bool = False, address: Optional[str] = None, gpus_per_actor: Optional[float] = None,
                   cpus_per_actor: Optional[float] = None, progress: bool = True) -> CorpusSummary:
    """Explain every doc of `input` with the pipeline's attribution components (or `methods`) and write the
    rows to the directory `output` (see the module's docstring); the summary of the run.

    workers: local processes or Ray actors. batch_size: docs per ``nlp.pipe`` call and per part file.
    gpus_per_actor: default 1 where the Ray cluster has GPUs, else 0 (at most the cluster's GPUs in all). cpus_per_actor: default 1, less
    where the actors would otherwise hold every CPU of the cluster (a Ray Data deadlock)."""
    if engine not in ("local", "ray"):
        raise ValueError(f"Unknown engine {engine!r}: local or ray")
    if workers < 1 or batch_size < 1:
        raise ValueError(f"workers ({workers}) and batch_size ({batch_size}) must be at least 1")
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise ImportError(RAY_HINT)
    records = read_records(Path(input), text_field, id_field)
    if not records:
        raise ValueError(f"{input} holds no docs")
    spec = PipelineSpec(pipeline, tuple(methods), tuple(labels), tuple(overrides))
    nlp = spec.load()  # here first, so that a bad pipeline or method fails before any worker starts
    out = PartFiles(Path(output))
    done = out.prepare(resume, overwrite)
    unknown = done - {record.id for record in records}
    if unknown:
        raise ValueError(f"{output} holds ids that are not in {input} (e.g. {sorted(unknown)[0]!r}): the output of "
                         "another corpus?")
    pending = [record for record in records if record.id not in done]
    start = time.perf_counter()
    summary = CorpusSummary(len(records), len(done), 0, 0, 0, 0.0, workers, engine)
    # docs/s even below one doc a second (tqdm's default turns it into s/doc).
    bar_format = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]"
    with tqdm(total=len(pending), unit="doc", desc="explaining", disable=not progress, smoothing=0.1,
              bar_format=bar_format) as bar:
        if engine == "ray":
            tables: Iterable[pyarrow.Table] = _ray_tables(spec, pending, workers, batch_size, docbin, address,
                                                          gpus_per_actor, cpus_per_actor)
        elif workers == 1:
            tables = (rows_table(explain_records(nlp, chunk, docbin)) for chunk in chunks(pending, batch_size))
        else:
            tables = _pool_tables(nlp, spec, pending, workers, batch_size, docbin)
        for table in tables:
            out.write(table)
            ids = table.column("id").to_pylist()
            failed = {i: e for i, e in zip(ids, table.column("error").to_pylist()) if e is not None}
            summary.errors.update(failed)
            summary.explained += len(set(ids))
            summary.failed += len(failed)
            summary.rows += table.num_rows
            bar.update(len(set(ids)))
    summary.seconds = time.perf_counter() - start
    return summary


# The local pool's pipeline: in each worker process, the one it was forked with, or (where processes are
# spawned) the one `_start_worker` loads.
_WORKER_NLP: Optional[Language] = None


def _start_worker(spec: PipelineSpec, threads: int) -> None:
    """A spawned worker loads the pipeline and runs torch on its share of the cores; a forked one keeps the
    pipeline it was forked with, and one torch thread (`view.guards.register_fork_guard`: more would hang
    on the OpenMP pool of the parent)."""
    import torch

    global _WORKER_NLP
    if _WORKER_NLP is None:
        torch.set_num_threads(threads)
        _WORKER_NLP = spec.load()


def _explain_in_worker(records: List[Record], docbin: bool) -> pyarrow.Table:
    assert _WORKER_NLP is not None, "the worker's initializer did not run"
    return rows_table(explain_records(_WORKER_NLP, records, docbin))


MAX_POOL_RESTARTS = 3


def _pool_tables(nlp: Language, spec: PipelineSpec, records: List[Record], workers: int, batch_size: int,
                 docbin: bool) -> Iterator[pyarrow.Table]:
    """Tables of rows from a pool of `workers` processes, as chunks complete; at most 2 chunks per worker
    in flight. The workers are forked with `nlp` where the platform forks (as ``nlp.pipe(n_process)`` does:
    no second import or load), else spawned and load `spec` (see `_start_worker` for their threads). A
    dead worker breaks the pool: it is started again and the unfinished chunks are resubmitted (at most
    `MAX_POOL_RESTARTS` times, then a RuntimeError; the files written so far stay, for resume)."""
    global _WORKER_NLP
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = get_context("fork" if "fork" in get_all_start_methods() else "spawn")
    waiting = chunks(records, batch_size)
    restarts = 0
    _WORKER_NLP = nlp if context.get_start_method() == "fork" else None
    while waiting:
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(spec, threads))
        running: Dict[Future, List[Record]] = {}
        try:
            while waiting or running:
                while waiting and len(running) < 2 * workers:
                    chunk = waiting.pop(0)
                    running[pool.submit(_explain_in_worker, chunk, docbin)] = chunk
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    table = future.result()
                    del running[future]
                    yield table
        except BrokenProcessPool:
            restarts += 1
            if restarts > MAX_POOL_RESTARTS:
                raise RuntimeError(f"A worker process died {restarts} times; the docs written so far stay in "
                                   "OUTPUT: run again with --resume") from None
            waiting = [chunk for chunk in running.values()] + waiting
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    _WORKER_NLP = None


def _ray_tables(spec: PipelineSpec, records: List[Record], actors: int, batch_size: int, docbin: bool,
                address: Optional[str], gpus_per_actor: Optional[float], cpus_per_actor: Optional[float]
                ) -> Iterator[pyarrow.Table]:
    """Tables of rows from `explain_dataset` over the records, joining the cluster at `address` (else the
    running one, else a new local one)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # the caller counts docs, not blocks
        items = [{"id": r.id, "text": r.text, "doc": r.doc, "error": r.error} for r in records]
        # At least 4 blocks per actor, so that a block of long docs does not leave the others idle.
        blocks = max(min(len(items), 4 * actors), math.ceil(len(items) / batch_size))
        dataset = ray.data.from_items(items, override_num_blocks=blocks)
        explained = explain_dataset(dataset, spec, actors=actors, batch_size=batch_size, docbin=docbin,
                                    gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor)
        yield from explained.iter_batches(batch_size=None, batch_format="pyarrow")
    finally:
        if started:
            ray.shutdown()  # its actors too: left to the interpreter's exit, they outlived it (measured)


MAX_TASK_RETRIES = 3


class CorpusExplainer:
    """The Ray Data UDF: one per actor, holding the pipeline; a batch of records in, their rows out."""

    def __init__(self, spec: PipelineSpec, docbin: bool = False, gpu: bool = False):
        if gpu:
            import spacy

            spacy.require_gpu()
        self.nlp = spec.load()
        self.docbin = docbin

    def __call__(self, batch: pyarrow.Table) -> pyarrow.Table:
        records = [Record(**row) for row in batch.to_pylist()]
        return rows_table(explain_records(self.nlp, records, self.docbin))


def explain_dataset(dataset: Any, spec: PipelineSpec, *, actors: int = 1, batch_size: int = 64, docbin: bool = False,
                    gpus_per_actor: Optional[float] = None, cpus_per_actor: Optional[float] = None,
                    explainer: type = CorpusExplainer) -> Any:
    """A lazy `ray.data.Dataset` of the rows (`SCHEMA`) of `dataset`, whose rows are records (id, text,
    doc, error), explained by a pool of `actors` actors (`explainer`, one pipeline each).

    gpus_per_actor defaults to 1 where the cluster has GPUs (one process per GPU, a larger batch: spaCy's
    advice, explosion/spaCy#9242); more GPUs than the cluster has are a ValueError. The actors are given at most all CPUs of the cluster but one, since
    Ray Data's own tasks need a CPU (ray-project/ray#44687): cpus_per_actor defaults to 1 or that share,
    and a larger setting is a ValueError. An exception that escapes a batch is retried, at most
    `MAX_TASK_RETRIES` times (a dead actor is restarted, and its batch retried as often)."""
    import ray

    cluster_cpus, cluster_gpus = ray.cluster_resources().get("CPU", 0), ray.cluster_resources().get("GPU", 0)
    if gpus_per_actor is None:
        gpus_per_actor = 1 if cluster_gpus else 0
    if actors * gpus_per_actor > cluster_gpus:
        raise ValueError(f"{actors} actors × {gpus_per_actor} GPUs, but the cluster has {cluster_gpus:g} GPUs (the "
                         "actors would wait for them forever): use fewer actors or GPUs per actor")
    free = cluster_cpus - 1
    if cpus_per_actor is None:
        cpus_per_actor = min(1.0, free / actors) if free > 0 else 0.0
    if actors * cpus_per_actor > max(free, 0) and cpus_per_actor > 0:
        raise ValueError(f"{actors} actors × {cpus_per_actor} CPUs leave no CPU of the cluster's {cluster_cpus:g} for "
                         "Ray Data's read and write tasks (they would never run): use fewer actors or CPUs per actor")
    # A doc's own failure is an error row (explain_records); what escapes a batch is the machine's (memory, a
    # lost node), worth a few retries, not Ray's default of retrying forever.
    ray.data.DataContext.get_current().actor_task_retry_on_errors = True
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing remote args such as max_task_retries but names no replacement for it.
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        return dataset.map_batches(
            explainer, fn_constructor_kwargs={"spec": spec, "docbin": docbin, "gpu": gpus_per_actor > 0},
            compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size, batch_format="pyarrow",
            num_cpus=cpus_per_actor, num_gpus=gpus_per_actor, max_task_retries=MAX_TASK_RETRIES)
