"""Throughput of ``spacy-attrib explain-corpus`` against one process running ``nlp.pipe`` on the same docs.

    python bench/scale.py PIPELINE [--data assets/sst2_demo_train.tsv] [--text-column sentence] [--n-docs N]
                          [--methods integrated_gradients] [--workers 1,2] [--ray 1,2] [--gpu-actors N]
                          [--batch-size 64] [--out scale.json]

Rows (each in a fresh Python process, as a user runs it; docs/s over the docs of ``--data``):

- ``nlp.pipe, 1 process``: the pipeline with the chosen ``--methods`` (`PipelineSpec.load`, as the engines
  load it) over docs tokenized before the clock starts; the baseline.
- ``local, N workers``: `explain_corpus` with the local engine, for each N of ``--workers`` (1: in process;
  more: forked workers), writing the Parquet rows to a fresh directory.
- ``ray, N actors`` (``--ray``): the Ray engine on a local Ray cluster started by the run (its start-up is
  in the wall time, not in "explain s").
- ``ray, N GPU actors`` (``--gpu-actors N``, for a machine with GPUs): N actors with one GPU each.

Columns: "explain s" (the explaining itself: for the engines from the first doc handed out to the last part
file written, worker start included), "wall s" (the whole process: imports, loading the pipeline, the
Ray cluster), docs/s over "explain s", docs/s per worker, and the speed-up over the baseline. The machine's
load average is recorded at the start and the end: on a shared machine other processes slow every row.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

SST2_TRAIN = Path(__file__).resolve().parent.parent / "assets" / "sst2_demo_train.tsv"


def run_row(row: Dict[str, Any]) -> Dict[str, Any]:
    """One row, measured in this process (the child): `row` names the engine and its workers."""
    start = time.perf_counter()
    from spacy_attrib.distributed import PipelineSpec, explain_corpus, read_records

    spec = PipelineSpec(row["pipeline"], tuple(row["methods"]))
    records = read_records(Path(row["data"]), row["text_column"])[:row["n_docs"]]
    with tempfile.TemporaryDirectory() as scratch:
        if row["engine"] == "nlp.pipe":
            nlp = spec.load()
            docs = [nlp.make_doc(record.text) for record in records]
            explain_start = time.perf_counter()
            for _ in nlp.pipe(docs):
                pass
            explain_s = time.perf_counter() - explain_start
        else:
            data = Path(scratch) / "input.jsonl"
            data.write_text("".join(json.dumps({"id": r.id, "text": r.text}) + "\n" for r in records), encoding="utf8")
            summary = explain_corpus(row["pipeline"], data, Path(scratch) / "out", methods=row["methods"],
                                     engine=row["engine"], workers=row["workers"], batch_size=row["batch_size"],
                                     gpus_per_actor=row.get("gpus_per_actor"), progress=False)
            assert summary.explained == len(records) and summary.failed == 0, summary
            explain_s = summary.seconds
    return {**row, "docs": len(records), "explain_s": explain_s, "wall_s": time.perf_counter() - start}


def measure(row: Dict[str, Any]) -> Dict[str, Any]:
    """`row` measured in a fresh process."""
    result = subprocess.run([sys.executable, __file__, "--row", json.dumps(row)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{row['name']} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_table(rows: Sequence[Dict[str, Any]]) -> None:
    baseline = rows[0]["docs"] / rows[0]["explain_s"]
    header = f"| {'run':<24} | {'docs':>5} | {'explain s':>9} | {'wall s':>7} | {'docs/s':>7} | {'per worker':>10} | {'× nlp.pipe':>10} |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for row in rows:
        rate = row["docs"] / row["explain_s"]
        print(f"| {row['name']:<24} | {row['docs']:>5} | {row['explain_s']:>9.1f} | {row['wall_s']:>7.1f} | "
              f"{rate:>7.2f} | {rate / row['workers']:>10.2f} | {rate / baseline:>10.2f} |")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", nargs="?", help="a trained pipeline (e.g. training/demo/model-best)")
    parser.add_argument("--data", type=Path, default=SST2_TRAIN, help="a .txt, .jsonl, .tsv or .spacy input")
    parser.add_argument("--text-column", default="sentence", help="the text field of .jsonl and .tsv input")
    parser.add_argument("--n-docs", type=int, default=None, help="the first N docs (default: all)")
    parser.add_argument("--methods", default="integrated_gradients", help="comma-separated methods")
    parser.add_argument("--workers", default="1,2", help="local engine worker counts")
    parser.add_argument("--ray", default="", help="Ray actor counts on a local cluster (e.g. 1,2; needs the extra)")
    parser.add_argument("--gpu-actors", type=int, default=0, help="a Ray row with N actors of one GPU each")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("scale.json"))
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: measure one row in this process
    args = parser.parse_args(argv)
    if args.row is None and args.pipeline is None:
        parser.error("PIPELINE is required")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.row:
        print(json.dumps(run_row(json.loads(args.row))), flush=True)
        return
    common = {"pipeline": args.pipeline, "data": str(args.data), "text_column": args.text_column,
              "n_docs": args.n_docs, "methods": args.methods.split(","), "batch_size": args.batch_size}
    plan: List[Dict[str, Any]] = [{**common, "name": "nlp.pipe, 1 process", "engine": "nlp.pipe", "workers": 1}]
    plan += [{**common, "name": f"local, {n} worker{'s' * (n > 1)}", "engine": "local", "workers": n}
             for n in map(int, filter(None, args.workers.split(",")))]
    plan += [{**common, "name": f"ray, {n} actor{'s' * (n > 1)}", "engine": "ray", "workers": n, "gpus_per_actor": 0}
             for n in map(int, filter(None, args.ray.split(",")))]
    if args.gpu_actors:
        plan.append({**common, "name": f"ray, {args.gpu_actors} GPU actors", "engine": "ray",
                     "workers": args.gpu_actors, "gpus_per_actor": 1})
    settings = {"cpus": os.cpu_count(), "load_average_start": os.getloadavg(), **common}
    rows = []
    for row in plan:
        rows.append(measure(row))
        print(f"{row['name']}: {rows[-1]['explain_s']:.1f} s", file=sys.stderr, flush=True)
    settings["load_average_end"] = os.getloadavg()
    print(json.dumps(settings))
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
