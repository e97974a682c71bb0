"""Every foundation method on a GPU pipeline (`spacy.require_gpu()`) agrees with the CPU pipeline.
Skipped where there is no GPU."""

import numpy
import pytest
import spacy
import torch

from conftest import explain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

METHODS = {"attr_saliency": {}, "attr_gradient_x_input": {}, "attr_integrated_gradients": {"n_steps": 16},
           "attr_smoothgrad": {"n_samples": 4}}
TEXTS = ["the plot was dull and slow .", "this movie is very good !", "it was fun"]


@pytest.fixture(scope="module")
def gpu_nlp(textcat_dir):
    spacy.require_gpu()
    try:
        yield spacy.load(textcat_dir)
    finally:
        spacy.require_cpu()


@pytest.mark.parametrize("factory", sorted(METHODS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_matches_cpu(textcat_dir, gpu_nlp, factory, dtype):
    cpu_nlp = spacy.load(textcat_dir)
    config = {**METHODS[factory], "labels": "all"}
    component, gpu_docs = explain(gpu_nlp, factory, TEXTS, dtype=dtype, **config)
    assert component.view.device.type == "cuda"
    _, cpu_docs = explain(cpu_nlp, factory, TEXTS, **config)
    key = factory[len("attr_"):]
    tolerance = 1e-3 if dtype == "float32" else 0.03
    for gpu_doc, cpu_doc in zip(gpu_docs, cpu_docs):
        for label, expected in cpu_doc._.attributions[key].items():
            got = gpu_doc._.attributions[key][label]
            scale = numpy.abs(expected.wordpiece_scores).max()
            numpy.testing.assert_allclose(got.wordpiece_scores, expected.wordpiece_scores, atol=tolerance * scale)
            numpy.testing.assert_allclose(got.scores, expected.scores, atol=tolerance * scale)


def test_auto_steps_on_gpu(gpu_nlp):
    _, docs = explain(gpu_nlp, "attr_integrated_gradients", TEXTS, n_steps="auto", tolerance=0.01)
    for doc in docs:
        (attribution,) = doc._.attributions["integrated_gradients"].values()
        assert attribution.extras["relative_delta"] <= 0.01 + 1e-6
