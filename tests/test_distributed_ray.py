"""The Ray engine of `spacy_attrib.distributed` on a local Ray cluster (one per session, 4 logical CPUs so that
the actors never hold them all): the same rows as a single-process run, each doc exactly once when an actor
raises on its first batch or dies there, and after a resumed run. Skipped where Ray is not installed."""

import os
from pathlib import Path

import pyarrow
import pytest

from spacy_attrib.distributed import PipelineSpec, explain_corpus, explain_dataset, read_output, read_records
from spacy_attrib.distributed import CorpusExplainer

import test_distributed
from test_distributed import METHODS, TEXTS, assert_rows_match, write_jsonl

corpus, reference = test_distributed.corpus, test_distributed.reference  # the local engine's fixtures

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()  # and its workers: none may outlive the session


def explained_rows(corpus: Path, spec: PipelineSpec, explainer: type) -> list:
    items = [{"id": r.id, "text": r.text, "doc": r.doc, "error": r.error} for r in read_records(corpus)]
    dataset = explain_dataset(ray.data.from_items(items, override_num_blocks=4), spec, actors=2, batch_size=3,
                              explainer=explainer)
    return pyarrow.concat_tables(dataset.iter_batches(batch_size=None, batch_format="pyarrow")).to_pylist()


def test_ray_engine_writes_the_rows_of_a_single_process_run(textcat_dir, corpus, reference, tmp_path):
    summary = explain_corpus(str(textcat_dir), corpus, tmp_path / "out", methods=METHODS, engine="ray", workers=2,
                             batch_size=5, progress=False)
    assert (summary.explained, summary.failed, summary.engine) == (len(TEXTS), 0, "ray")
    assert_rows_match(read_output(tmp_path / "out").to_pylist(), reference)


@pytest.mark.parametrize("failure", ["raise", "exit"])
def test_a_batch_whose_actor_fails_once_is_explained_once(textcat_dir, corpus, reference, tmp_path, failure):
    marker = tmp_path / "failed"

    class FailsOnFirstBatch(CorpusExplainer):
        """Fails on the first batch any actor gets (the marker file says it did), then explains."""

        def __call__(self, batch):
            if not marker.exists():
                marker.touch()
                if failure == "exit":
                    os._exit(1)
                raise RuntimeError("injected failure")
            return super().__call__(batch)

    rows = explained_rows(corpus, PipelineSpec(str(textcat_dir), METHODS), FailsOnFirstBatch)
    assert marker.exists()
    assert_rows_match(rows, reference)


@pytest.mark.slow  # two more Dataset runs (about 25 s idle); the local engine's resume test is in the default run
def test_a_resumed_ray_run_explains_only_the_missing_docs(textcat_dir, reference, tmp_path):
    half, full = write_jsonl(tmp_path / "half.jsonl", TEXTS[:6]), write_jsonl(tmp_path / "full.jsonl", TEXTS)
    out = tmp_path / "out"
    explain_corpus(str(textcat_dir), half, out, methods=METHODS, engine="ray", workers=2, batch_size=3,
                   progress=False)
    summary = explain_corpus(str(textcat_dir), full, out, methods=METHODS, engine="ray", workers=2, batch_size=3,
                             resume=True, progress=False)
    assert (summary.skipped, summary.explained) == (6, 6)
    assert_rows_match(read_output(out).to_pylist(), reference)


@pytest.mark.parametrize("resources,message", [
    ({"actors": 2, "cpus_per_actor": 2}, "leave no CPU of the cluster's 4"),
    ({"actors": 1, "gpus_per_actor": 1}, "the cluster has 0 GPUs"),
])
def test_actors_that_would_wait_forever_are_refused(textcat_dir, resources, message):
    dataset = ray.data.from_items([{"id": "0", "text": "a film .", "doc": None, "error": None}])
    with pytest.raises(ValueError, match=message):
        explain_dataset(dataset, PipelineSpec(str(textcat_dir), METHODS), **resources)
