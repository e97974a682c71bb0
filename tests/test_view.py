"""The differentiable view: the same predictions as the pipeline, every supported head, no side effects."""

import numpy
import pytest
import spacy
import torch

from spacy_attrib import iter_attributions
from spacy_attrib.view import DifferentiableView, state_site
from spacy_attrib.view.transformer import MATH_ATTENTION_MAX_WIDTH

from conftest import LISTENER, explain, weights_snapshot

METHODS = ["attr_saliency", "attr_gradient_x_input", "attr_integrated_gradients", "attr_smoothgrad"]
SMALL = {"attr_integrated_gradients": {"n_steps": 8}, "attr_smoothgrad": {"n_samples": 3}}


def test_scores_reproduce_the_pipeline_textcat(textcat_nlp, texts):
    view = DifferentiableView(textcat_nlp, output="prob")
    docs = list(textcat_nlp.pipe(texts))
    with view.frozen(), torch.no_grad():
        scores = view.forward(view.encode(docs)).scores[:, 0]
    for doc, row in zip(docs, scores):
        expected = [doc.cats[label] for label in view.labels]
        numpy.testing.assert_allclose(row.numpy(), expected, atol=1e-5)


def test_scores_reproduce_the_pipeline_multilabel(multilabel_nlp, texts):
    view = DifferentiableView(multilabel_nlp, output="prob")
    assert not view.exclusive
    docs = list(multilabel_nlp.pipe(texts))
    with view.frozen(), torch.no_grad():
        scores = view.forward(view.encode(docs)).scores[:, 0]
    for doc, row in zip(docs, scores):
        numpy.testing.assert_allclose(row.numpy(), [doc.cats[label] for label in view.labels], atol=1e-5)


def test_scores_reproduce_the_pipeline_tagger(tagger_nlp, texts):
    view = DifferentiableView(tagger_nlp)
    assert view.per_token
    docs = list(tagger_nlp.pipe(texts))
    with view.frozen(), torch.no_grad():
        output = view.forward(view.encode(docs))
    for j, doc in enumerate(docs):
        predicted = [view.labels[i] for i in output.scores[j, :len(doc)].argmax(-1).tolist()]
        assert predicted == [token.tag_ for token in doc]
        log_probs = output.scores[j, :len(doc)]
        numpy.testing.assert_allclose(log_probs.exp().sum(-1).numpy(), 1.0, atol=1e-5)


def test_log_prob_is_log_of_prob(textcat_nlp, texts):
    docs = [textcat_nlp.make_doc(t) for t in texts]
    outputs = {}
    for output in ("log_prob", "prob", "logit"):
        view = DifferentiableView(textcat_nlp, output=output)
        with view.frozen(), torch.no_grad():
            outputs[output] = view.forward(view.encode(docs)).scores
    numpy.testing.assert_allclose(outputs["log_prob"].exp().numpy(), outputs["prob"].numpy(), atol=1e-6)
    numpy.testing.assert_allclose(torch.log_softmax(outputs["logit"], -1).numpy(), outputs["log_prob"].numpy(),
                                  atol=1e-5)


def test_gradient_reaches_the_input_and_matches_finite_differences(textcat_nlp):
    view = DifferentiableView(textcat_nlp)
    batch = view.encode([textcat_nlp.make_doc("this movie is very good !")])
    with view.frozen():
        inputs = view.capture(batch).requires_grad_(True)
        value = view.forward(batch, inputs).scores[0, 0, 0]
        (grad,) = torch.autograd.grad(value, inputs)
        direction = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(0))
        direction = direction * batch.attention_mask.unsqueeze(-1)
        eps = 1e-2
        with torch.no_grad():
            plus = view.forward(batch, inputs + eps * direction).scores[0, 0, 0]
            minus = view.forward(batch, inputs - eps * direction).scores[0, 0, 0]
    numerical = float(plus - minus) / (2 * eps)
    assert float((grad * direction).sum()) == pytest.approx(numerical, rel=2e-2, abs=1e-4)


def test_layer_site(textcat_nlp):
    """IG at layer 1's output also sums to f(x) − f(x′) (x′: the baseline text's layer-1 states)."""
    _, (doc,) = explain(textcat_nlp, "attr_integrated_gradients", ["the plot was dull and slow ."],
                        attribute_at=1)
    attribution = next(iter(doc._.attributions["integrated_gradients"].values()))
    assert attribution.extras["relative_delta"] < 0.01
    with pytest.raises(ValueError, match="layer must be in 0..2"):
        DifferentiableView(textcat_nlp, attribute_at=3)


@pytest.mark.parametrize("layer", [1, 2])
def test_a_pass_from_a_layer_site_runs_only_the_layers_above_and_equals_the_full_pass(textcat_nlp, layer):
    """Values given after layer k: the pass starts there (the layers below do not run again) and gives the
    full pass's outputs and gradients, chunked or not; the encoder is left as it was."""
    view = DifferentiableView(textcat_nlp, attribute_at=layer)
    hf = view.hf_model
    layers, ids = hf.encoder.layer, [id(m) for m in hf.encoder.layer]
    batch = view.encode([textcat_nlp.make_doc(t) for t in ("the plot was dull and slow .", "a warm , witty film !")])
    calls = []
    handles = [m.register_forward_hook(lambda module, args, output, i=i: calls.append(i)) for i, m in enumerate(layers)]
    try:
        with view.frozen():
            noisy = view.capture(batch) + 0.1 * torch.randn(view.capture(batch).shape, generator=torch.Generator().manual_seed(0))
            results = []
            for start in (view.run.start_layer, None):
                view.run.start_layer = start
                for max_rows in (None, 1):
                    inputs = noisy.clone().requires_grad_(True)
                    calls.clear()
                    scores = view.forward(batch, inputs, max_rows=max_rows).scores
                    (grad,) = torch.autograd.grad(scores[:, 0, 0].sum(), inputs)
                    results.append((scores.detach(), grad, sorted(set(calls))))
    finally:
        for handle in handles:
            handle.remove()
    assert view.run.start_layer is None and results[0][2] == list(range(layer, len(layers)))
    assert results[2][2] == list(range(len(layers)))
    for scores, grad, _ in results[1:]:
        torch.testing.assert_close(scores, results[0][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad, results[0][1], atol=1e-5, rtol=1e-4)
    assert hf.encoder.layer is layers and [id(m) for m in hf.encoder.layer] == ids


def test_states_are_the_word_embeddings_and_every_layer_input_and_each_feeds_its_site(textcat_nlp):
    """`states` holds DiffMask's L + 2 states (word embeddings, Hugging Face's hidden_states); a pass with
    state i given back at `state_site(i)` gives the clean scores, and a changed state changes them."""
    view = DifferentiableView(textcat_nlp)
    batch = view.encode([textcat_nlp.make_doc(t) for t in ("the plot was dull and slow .", "good")])
    states = view.states(batch)
    hf = view.hf_model
    with view.frozen(), torch.no_grad():
        reference = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       token_type_ids=batch.token_type_ids, output_hidden_states=True).hidden_states
        clean = view.forward(batch).scores
        assert len(states) == len(hf.encoder.layer) + 2
        torch.testing.assert_close(states[0], hf.get_input_embeddings()(batch.input_ids))
        for state, expected in zip(states[1:], reference):
            torch.testing.assert_close(state, expected)
        for i, state in enumerate(states):
            torch.testing.assert_close(view.forward(batch, state, site=state_site(i)).scores, clean, atol=1e-5, rtol=1e-5)
            noise = torch.randn(state.shape, generator=torch.Generator().manual_seed(i))
            changed = view.forward(batch, state + noise, site=state_site(i)).scores
            assert not torch.allclose(changed, clean, atol=1e-4)
    assert [state_site(i) for i in range(4)] == ["word_embeddings", 0, 1, 2]
    with pytest.raises(ValueError, match="a state index is an integer from 0"):
        state_site(-1)


def test_perturbed_ids_forward(textcat_nlp):
    view = DifferentiableView(textcat_nlp)
    batch = view.encode([textcat_nlp.make_doc("the plot was dull")])
    masked = batch.input_ids.clone()
    masked[0, 1:-1] = view.token_id("mask")
    with view.frozen(), torch.no_grad():
        original = view.forward(batch).scores
        again = view.forward(batch, input_ids=batch.input_ids).scores
        perturbed = view.forward(batch, input_ids=masked).scores
        baseline = view.forward(batch, view.capture(batch, masked)).scores
    torch.testing.assert_close(original, again)
    torch.testing.assert_close(perturbed, baseline)
    assert not torch.allclose(original, perturbed)


@pytest.mark.parametrize("factory", METHODS)
@pytest.mark.parametrize("pipeline", ["textcat_nlp", "tagger_nlp", "spancat_nlp", "ner_nlp", "ner_upper_nlp"])
def test_methods_leave_the_model_untouched(request, pipeline, factory):
    """Weights bit-identical, no gradient on any parameter (torch or thinc), modes restored, same result
    twice."""
    nlp = request.getfixturevalue(pipeline)
    hf = nlp.get_pipe("transformer").model.transformer
    hf.train()  # as spacy-transformers leaves it after each prediction
    before = weights_snapshot(nlp)
    head = nlp.get_pipe(nlp.pipe_names[1])
    thinc_grads_before = {(n.id, g) for n in head.model.walk() for g in n.grad_names}
    # Training through spacy-transformers leaves zeroed .grad tensors; a loaded pipeline has none.
    torch_grads_before = [None if p.grad is None else p.grad.clone() for p in hf.parameters()]
    texts = (["the plot was dull and slow .", "this movie is very good !"] if "ner" not in pipeline else
             ["we met alex at the company", "the city and then sam kim was there"])
    _, first = explain(nlp, factory, texts, **SMALL.get(factory, {}))
    _, second = explain(nlp, factory, texts, **SMALL.get(factory, {}))
    after = weights_snapshot(nlp)
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, after[key]), key
        else:
            assert numpy.array_equal(value, after[key]), key
    for param, grad in zip(hf.parameters(), torch_grads_before):
        assert (param.grad is None) if grad is None else torch.equal(param.grad, grad)
    assert all(p.requires_grad for p in hf.parameters())
    assert hf.training
    assert {(n.id, g) for n in head.model.walk() for g in n.grad_names} == thinc_grads_before
    results = [list(iter_attributions(doc)) for doc in first]
    assert sum(map(len, results)) >= 2
    for attributions, doc_b in zip(results, second):
        again = list(iter_attributions(doc_b))
        assert [(a.label, a.token, a.span) for a in attributions] == [(a.label, a.token, a.span) for a in again]
        for a, b in zip(attributions, again):
            numpy.testing.assert_array_equal(a.wordpiece_scores, b.wordpiece_scores)


def test_loaded_pipeline_gets_no_gradients(textcat_dir):
    nlp = spacy.load(textcat_dir)
    _, docs = explain(nlp, "attr_integrated_gradients", ["the plot was dull"], n_steps=4)
    assert docs[0]._.attributions["integrated_gradients"]
    assert all(p.grad is None for p in nlp.get_pipe("transformer").model.transformer.parameters())


def test_no_transformer_is_a_clear_error():
    nlp = spacy.blank("en")
    nlp.add_pipe("textcat")
    with pytest.raises(ValueError, match="no spacy-transformers 'transformer' component"):
        DifferentiableView(nlp)


def test_head_that_does_not_listen_is_a_clear_error(textcat_nlp):
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", source=textcat_nlp)
    nlp.add_pipe("textcat")  # a bag-of-words textcat with its own tok2vec
    nlp.get_pipe("textcat").add_label("POS")
    with pytest.raises(ValueError, match="does not listen to the transformer"):
        DifferentiableView(nlp, "textcat")
    with pytest.raises(ValueError, match="No supported head listens"):
        DifferentiableView(nlp)
    with pytest.raises(ValueError, match="No component named 'ner'"):
        DifferentiableView(nlp, "ner")


def test_several_heads_need_a_choice(textcat_nlp):
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", source=textcat_nlp)
    nlp.add_pipe("textcat", source=textcat_nlp)
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": LISTENER}})
    with pytest.raises(ValueError, match="Several heads listen"):
        DifferentiableView(nlp)
    assert DifferentiableView(nlp, "textcat").labels == ("POS", "NEG")


@pytest.mark.parametrize("factory", METHODS)
def test_bfloat16_stays_close_to_float32(textcat_nlp, factory):
    """bf16 autocast (8-bit mantissa) vs float32 on the tiny model: every attribution within 2 % of the
    float32 attribution's largest magnitude, outputs within 0.01, correlation above 0.999 (measured:
    0.25 %, 1e-3 and 0.99999 on CPU)."""
    texts = ["the plot was dull and slow .", "this movie is very good !"]
    key = factory[len("attr_"):]
    results = {}
    for dtype in ("float32", "bfloat16"):
        _, docs = explain(textcat_nlp, factory, texts, dtype=dtype, labels="all", **SMALL.get(factory, {}))
        results[dtype] = [a for doc in docs for a in doc._.attributions[key].values()]
    for full, half in zip(results["float32"], results["bfloat16"]):
        scale = numpy.abs(full.wordpiece_scores).max()
        numpy.testing.assert_allclose(half.wordpiece_scores, full.wordpiece_scores, atol=0.02 * scale)
        assert half.output == pytest.approx(full.output, abs=0.01)
        assert numpy.corrcoef(full.wordpiece_scores, half.wordpiece_scores)[0, 1] > 0.999


def test_bfloat16_gradients_take_attention_by_the_math_kernel(textcat_nlp):
    """A differentiated bfloat16 pass on a CPU over short rows runs attention by SDPA's math kernel (the fused
    CPU kernel is slow to differentiate in bfloat16 there); float32 passes, no-grad bfloat16 passes and rows
    wider than MATH_ATTENTION_MAX_WIDTH keep torch's choice."""
    attention = textcat_nlp.get_pipe("transformer").model.transformer.encoder.layer[0].attention.self
    fused_allowed = []
    handle = attention.register_forward_pre_hook(
        lambda module, args: fused_allowed.append(torch.backends.cuda.flash_sdp_enabled()))
    doc = textcat_nlp.make_doc("the plot was dull and slow .")
    try:
        for dtype, grad in [("float32", True), ("bfloat16", True), ("bfloat16", False)]:
            view = DifferentiableView(textcat_nlp, dtype=dtype)
            with torch.set_grad_enabled(grad):
                view.forward(view.encode([doc]))
    finally:
        handle.remove()
    assert fused_allowed == [True, False, True]
    assert torch.backends.cuda.flash_sdp_enabled()
    # Past MATH_ATTENTION_MAX_WIDTH wordpieces the fused kernel is the faster one again.
    run = DifferentiableView(textcat_nlp, dtype="bfloat16").run
    for width, fused in [(MATH_ATTENTION_MAX_WIDTH, False), (MATH_ATTENTION_MAX_WIDTH + 1, True), (None, False)]:
        with run.autocast(width):
            assert torch.backends.cuda.flash_sdp_enabled() == fused


def test_bad_dtype(textcat_nlp):
    with pytest.raises(ValueError, match="dtype must be one of"):
        DifferentiableView(textcat_nlp, dtype="float16")


def test_precision_runs_the_block_in_another_dtype_and_restores_the_view(textcat_nlp):
    """`view.precision("float32")` inside a bfloat16 view gives the float32 view's outputs bit for bit,
    and the view is bfloat16 again after the block (also after an error inside it)."""
    half, full = DifferentiableView(textcat_nlp, dtype="bfloat16"), DifferentiableView(textcat_nlp)
    batch = half.encode([textcat_nlp.make_doc("the plot was dull and slow .")])
    with torch.no_grad():
        expected = full.forward(batch).scores
        with half.precision("float32"):
            assert not half.reduced_precision
            assert torch.equal(half.forward(batch).scores, expected)
        assert half.reduced_precision and not torch.equal(half.forward(batch).scores, expected)
    with pytest.raises(RuntimeError), half.precision("float32"):
        raise RuntimeError("inside")
    assert half.reduced_precision
    with pytest.raises(ValueError, match="dtype must be one of"), half.precision("float16"):
        pass


@pytest.mark.parametrize("grad_factor", [0.5, 0.0])
def test_listener_grad_factor_does_not_touch_attributions(textcat_dir, grad_factor):
    """`grad_factor` scales the gradient a listener hands the transformer in training (0 freezes it for
    that head); attributions must be those of the function, whatever it is, and it is restored after."""
    reference = spacy.load(textcat_dir)
    scaled = spacy.load(textcat_dir)
    nodes = [node for node in scaled.get_pipe("textcat").model.walk() if "grad_factor" in node.attrs]
    assert nodes
    for node in nodes:
        node.attrs["grad_factor"] = grad_factor
    text = "the plot was dull and slow ."
    for factory in METHODS:
        key = factory[len("attr_"):]
        _, (expected,) = explain(reference, factory, [text], **SMALL.get(factory, {}))
        _, (got,) = explain(scaled, factory, [text], **SMALL.get(factory, {}))
        (label, a), = expected._.attributions[key].items()
        numpy.testing.assert_allclose(got._.attributions[key][label].wordpiece_scores, a.wordpiece_scores, atol=1e-6)
        if factory == "attr_integrated_gradients":
            assert got._.attributions[key][label].extras["relative_delta"] < 0.01
    assert all(node.attrs["grad_factor"] == grad_factor for node in nodes)


FORK_PROBE = """
import os, sys
import spacy, torch
import spacy_attrib
torch.set_num_threads(2)

def threads_in_child():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, str(torch.get_num_threads()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    return int(os.read(read, 8))

nlp = spacy.load(sys.argv[1])  # spacy.load and spacy.blank import every factory entry point
before = threads_in_child()
nlp.add_pipe(sys.argv[2]) if sys.argv[2].startswith("attr_") else spacy_attrib.DifferentiableView(nlp)
print(before, threads_in_child())
"""


@pytest.mark.parametrize("first", ["attr_saliency", "view"])
def test_fork_guard_is_registered_by_the_first_component_or_view_not_on_import(textcat_dir, first):
    """Importing the package leaves forked children's torch threads alone; once an attribution component
    or a view exists, children forked by `nlp.pipe(n_process=…)` use one thread (a child using the
    parent's OpenMP pool hangs)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", FORK_PROBE, str(textcat_dir), first], capture_output=True,
                            text=True, check=True)
    assert result.stdout.split() == ["2", "1"]


def test_forward_and_backward_outside_frozen_see_the_same_function(textcat_dir):
    """forward() freezes the model itself, and a checkpointed chunk recomputed by a backward pass after it
    does too: the same gradient as inside frozen(), no gradient on any parameter, train mode restored."""
    nlp = spacy.load(textcat_dir)
    hf = nlp.get_pipe("transformer").model.transformer
    hf.train()  # as spacy-transformers leaves it after each prediction
    view = DifferentiableView(nlp)
    batch = view.encode([nlp.make_doc("the plot was dull and slow .")])
    inputs = view.capture(batch).repeat(3, 1, 1)

    def gradient(chunked: bool) -> torch.Tensor:
        leaf = inputs.clone().requires_grad_(True)
        output = view.forward(batch, leaf, doc_index=[0, 0, 0], max_rows=1 if chunked else None)
        return torch.autograd.grad(output.scores[:, 0, 0].sum(), leaf)[0]

    with view.frozen():
        expected = gradient(chunked=False)
    for chunked in (False, True):
        torch.testing.assert_close(gradient(chunked), expected)
    assert hf.training
    assert all(p.grad is None for p in hf.parameters())
