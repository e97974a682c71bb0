"""Attention capture, raw attention, attention rollout and LAT: the captured attention is Hugging Face's
eager attention, the algorithms give known answers on constructed matrices, the components give the
algorithms' answers on the captured attention for every head kind, and nothing about the model changes."""

import logging
import numpy
import pytest
import spacy
import torch
from transformers import AutoModel

from spacy_attrib import iter_attributions
from spacy_attrib.align import WordpieceLayout
from spacy_attrib.evaluation import evaluate
from spacy_attrib.methods.attention import head_mean, rollout, target_query, trace
from spacy_attrib.targets import Target

from conftest import build_pipeline, explain, gold_docs, make_method, planted_key_texts, weights_snapshot

TEXTS = ["this movie is very good !", "it was fun",
         "that actor was awful but the story was great , quite warm and witty ."]
FACTORIES = {"attr_attention": "attention", "attr_attention_rollout": "attention_rollout", "attr_lat": "lat"}


def eager_reference(hf_model):
    """A copy of the pipeline's transformer loaded with eager attention, in eval mode."""
    config = hf_model.config.__class__.from_dict(hf_model.config.to_dict())
    config._attn_implementation = "eager"
    reference = AutoModel.from_config(config, attn_implementation="eager")
    reference.load_state_dict(hf_model.state_dict())
    return reference.eval()


def reference_attention(hf_model, batch):
    """Hugging Face's own `output_attentions` under eager attention, masked as the capture masks."""
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if batch.token_type_ids is not None:
        kwargs["token_type_ids"] = batch.token_type_ids
    with torch.no_grad():
        attentions = eager_reference(hf_model)(**kwargs, output_attentions=True).attentions
    mask = batch.attention_mask.float()
    return [a * mask[:, None, :, None] * mask[:, None, None, :] for a in attentions], attentions


def all_hooks(module):
    return [(name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for name, m in module.named_modules()]


# -- capture --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_rows", [None, 1])
def test_captured_attention_is_hugging_face_eager_attention(textcat_nlp, max_rows):
    view = make_method(textcat_nlp, "attr_attention").view
    assert view.hf_model.config._attn_implementation == "sdpa"
    batch = view.encode(list(textcat_nlp.pipe(TEXTS)))
    with view.frozen(), torch.no_grad(), view.capturing_attention() as captured:
        view.forward(batch, max_rows=max_rows)
    values = captured.values(batch.width)
    masked, raw = reference_attention(view.hf_model, batch)
    assert values.shape == (len(TEXTS), len(raw), raw[0].shape[1], batch.width, batch.width)
    for layer, expected in enumerate(masked):
        numpy.testing.assert_allclose(values[:, layer].numpy(), expected.numpy(), atol=1e-6)
    # Real query rows are Hugging Face's rows unchanged (padded keys get 0 there already) and sum to 1.
    real = batch.attention_mask.bool()
    numpy.testing.assert_allclose(values[:, 0].permute(0, 2, 1, 3)[real].numpy(),
                                  raw[0].permute(0, 2, 1, 3)[real].numpy(), atol=1e-6)
    numpy.testing.assert_allclose(values[:, -1].sum(-1).permute(0, 2, 1)[real].numpy(), 1.0, atol=1e-5)
    assert float(values.permute(0, 3, 1, 2, 4)[~real].abs().max()) == 0.0  # padded query rows


def log_filters():
    return [list(handler.filters) for handler in logging.getLogger("transformers").handlers]


def test_capture_leaves_the_model_as_it_was(textcat_nlp):
    view = make_method(textcat_nlp, "attr_attention").view
    hf = view.hf_model
    before = (hf.config._attn_implementation, hf.attn_implementation, hf.config.output_attentions, all_hooks(hf),
              log_filters())
    batch = view.encode(list(textcat_nlp.pipe(TEXTS[:1])))
    with view.frozen(), torch.no_grad():
        with view.capturing_attention():
            assert hf.config._attn_implementation == "eager"
            view.forward(batch)
        # Outside the context nothing is captured and the model returns no attention.
        assert hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).attentions is None
    assert (hf.config._attn_implementation, hf.attn_implementation, hf.config.output_attentions,
            all_hooks(hf), log_filters()) == before


# -- the algorithms on constructed matrices --------------------------------------------------------------
def random_attention(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(shape, generator=generator, dtype=torch.float64) * 3, -1)


def test_lat_mass_uniform_and_identity():
    layers, heads, T = 3, 4, 6
    attentions = [random_attention((2, heads, T, T), seed) for seed in range(layers)]
    flow = trace(attentions)
    numpy.testing.assert_allclose(flow.sum(-1).numpy(), heads, atol=1e-12)
    # The one-hot trace: a_h ← a_h · A_h^(l) from the top layer down, head to head.
    a = torch.zeros(2, heads, T, dtype=torch.float64)
    a[:, :, 0] = 1
    for attention in reversed(attentions):
        a = torch.einsum("bhq,bhqk->bhk", a, attention)
    numpy.testing.assert_allclose(flow[:, 0].numpy(), a.sum(1).numpy(), atol=1e-12)
    uniform = [torch.full((heads, T, T), 1.0 / T)] * layers
    numpy.testing.assert_allclose(trace(uniform)[0].numpy(), heads / T, atol=1e-7)
    identity = [torch.eye(T).expand(heads, T, T)] * layers
    numpy.testing.assert_array_equal(trace(identity)[0].numpy(), [heads] + [0] * (T - 1))


def test_rollout_mass_identity_and_uniform():
    T = 5
    attentions = [head_mean(random_attention((3, 2, T, T), seed)) for seed in range(4)]
    numpy.testing.assert_allclose(rollout(attentions).sum(-1).numpy(), 1.0, atol=1e-12)
    # Rollout multiplies top layer first onto the flow: Ã = Â_L … Â_1.
    residual = [0.5 * a + 0.5 * torch.eye(T, dtype=a.dtype) for a in attentions]
    expected = residual[3] @ residual[2] @ residual[1] @ residual[0]
    numpy.testing.assert_allclose(rollout(attentions).numpy(), expected.numpy(), atol=1e-12)
    numpy.testing.assert_array_equal(rollout([torch.eye(T)] * 3).numpy(), torch.eye(T).numpy())
    # One uniform layer: 0.5 e_q + 0.5 / T everywhere.
    flow = rollout([torch.full((T, T), 1.0 / T)])
    numpy.testing.assert_allclose(flow[2].numpy(), [0.1, 0.1, 0.6, 0.1, 0.1], atol=1e-7)
    # Two: 0.25 e_q + 0.75 / T (uniform is absorbing), so the mass on the query decays as 2^-L.
    numpy.testing.assert_allclose(rollout([torch.full((T, T), 1.0 / T)] * 2)[2].numpy(),
                                  [0.15, 0.15, 0.4, 0.15, 0.15], atol=1e-7)


def test_target_query_is_uniform_over_the_targets_pieces_in_each_window():
    """Two windows of width 5 sharing a token: tokens 0..3 at flat positions 1, 2, 3 (row 0) and 6, 7, 8
    (row 1; token 2 is split into positions 3 and 6, one in each window)."""
    layout = WordpieceLayout(positions=numpy.array([1, 2, 3, 6, 7, 8]), strings=list("abcdef"),
                             alignment=[[0], [1], [2, 3], [4, 5]])
    real = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    numpy.testing.assert_array_equal(target_query(real, layout, Target("X", 0, 2, token=2)).numpy(),
                                     [[0, 0, 0, 1, 0], [0, 1, 0, 0, 0]])
    numpy.testing.assert_array_equal(target_query(real, layout, Target("X", 0, 0, span=(0, 2))).numpy(),
                                     [[0, 0.5, 0.5, 0, 0], [0, 0, 0, 0, 0]])


def test_head_mean_selects_heads():
    attention = random_attention((4, 3, 3))
    numpy.testing.assert_allclose(head_mean(attention, [1, 3]).numpy(),
                                  ((attention[1] + attention[3]) / 2).numpy())
    with pytest.raises(ValueError, match=r"heads \[4\] out of range.*4 attention heads"):
        head_mean(attention, [0, 4])


# -- the components: the algorithms on the captured attention --------------------------------------------
@pytest.mark.parametrize("factory,query", [("attr_attention", "cls"), ("attr_attention", "mean"),
                                           ("attr_attention_rollout", "mean"), ("attr_lat", "cls")])
def test_components_apply_the_algorithms_to_hugging_face_attention(textcat_nlp, factory, query):
    settings = {"query": query, **({"layer": 0, "heads": [1]} if factory == "attr_attention" else {})}
    component, docs = explain(textcat_nlp, factory, TEXTS, labels="all", **settings)
    batch = component.view.encode(docs)
    attentions, _ = reference_attention(component.view.hf_model, batch)
    for d, doc in enumerate(docs):
        n = int(batch.attention_mask[d].sum())
        q = torch.zeros(batch.width)
        if query == "cls":
            q[0] = 1
        else:
            q[:n] = 1 / n
        if factory == "attr_attention":
            flow = attentions[0][d, 1]
        elif factory == "attr_attention_rollout":
            flow = rollout([head_mean(a[d]) for a in attentions])
        else:
            flow = trace([a[d] for a in attentions])
        expected = (q @ flow)[:n].numpy()
        results = list(doc._.attributions[FACTORIES[factory]].values())
        assert len(results) == 2  # labels="all": one result per label, equal (attention has no target)
        for result in results:
            numpy.testing.assert_allclose(result.wordpiece_scores, expected, atol=1e-6)


@pytest.mark.parametrize("factory", sorted(FACTORIES))
def test_a_doc_alone_equals_it_in_a_batch_with_longer_docs(textcat_nlp, factory):
    _, together = explain(textcat_nlp, factory, TEXTS)
    _, alone = explain(textcat_nlp, factory, TEXTS[1:2])
    _, chunked = explain(textcat_nlp, factory, TEXTS, internal_batch_size=1)
    key = FACTORIES[factory]
    (expected,) = alone[0]._.attributions[key].values()
    for docs in (together, chunked):
        (result,) = docs[1]._.attributions[key].values()
        numpy.testing.assert_allclose(result.wordpiece_scores, expected.wordpiece_scores, atol=1e-6)


@pytest.fixture(scope="module")
def windowed_nlp(tiny_bert):
    """A textcat whose transformer sees long docs as several windows of 8 wordpieces (stride 6)."""
    return build_pipeline(tiny_bert, "textcat", n_epochs=1, window=8, stride=6)


@pytest.mark.parametrize("factory", sorted(FACTORIES))
def test_long_docs_get_each_rows_mass(windowed_nlp, factory):
    text = "the plot was dull and slow but the actor was warm , witty and wise ."
    component, (doc,) = explain(windowed_nlp, factory, [text])
    batch = component.view.encode([doc])
    assert batch.rows[0] >= 3
    (result,) = doc._.attributions[FACTORIES[factory]].values()
    per_row = 2 if factory == "attr_lat" else 1
    assert result.wordpiece_scores.sum() == pytest.approx(batch.rows[0] * per_row, abs=1e-5)
    assert len(result.scores) == len(doc) and (result.scores > 0).all()


HEAD_TEXTS = {"multilabel_nlp": ["this movie is very good !", "the plot was dull and the actor was awful ."],
              "tagger_nlp": ["it was fun", "the actor was awful"],
              "spancat_nlp": ["this movie is very good !", "that actor was awful but the story was great ."],
              "ner_nlp": ["we saw alex person there today", "kim company was here then"]}


@pytest.mark.parametrize("fixture", sorted(HEAD_TEXTS))
@pytest.mark.parametrize("factory", sorted(FACTORIES))
def test_every_head_kind_gets_one_unit_of_mass_per_target(request, fixture, factory):
    """Every target of every head kind gets non-negative scores of mass 1 (the number of heads for LAT)."""
    nlp = request.getfixturevalue(fixture)
    component, docs = explain(nlp, factory, HEAD_TEXTS[fixture])
    heads = component.view.hf_model.config.num_attention_heads
    mass = heads if factory == "attr_lat" else 1
    results = [a for doc in docs for a in iter_attributions(doc)]
    assert results
    for result in results:
        assert (fixture == "multilabel_nlp") == (result.token is None and result.span is None)
        assert result.wordpiece_scores.sum() == pytest.approx(mass, abs=1e-5)
        assert (result.wordpiece_scores >= 0).all()


@pytest.mark.parametrize("fixture", ["tagger_nlp", "spancat_nlp", "ner_nlp"])
def test_token_and_span_targets_query_their_own_wordpieces(request, fixture):
    """Raw attention of a token or span target is the mean of its wordpieces' attention rows."""
    nlp = request.getfixturevalue(fixture)
    labels = "predicted" if fixture == "ner_nlp" else "all"  # ner explains the labels its transitions built
    component, docs = explain(nlp, "attr_attention", HEAD_TEXTS[fixture], layer=0, heads=[0], labels=labels)
    batch = component.view.encode(docs)
    attentions, _ = reference_attention(component.view.hf_model, batch)
    checked = 0
    for d, doc in enumerate(docs):
        layout = batch.layout(d)
        for result in iter_attributions(doc):
            tokens = [result.token] if result.token is not None else range(*result.span)
            pieces = layout.positions[[p for t in tokens for p in layout.alignment[t]]]
            expected = attentions[0][d, 0, pieces].mean(0)[:len(layout.positions)]
            numpy.testing.assert_allclose(result.wordpiece_scores, expected.numpy(), atol=1e-6)
            checked += 1
    assert checked >= len(docs)


# -- faithfulness on the planted-key task ----------------------------------------------------------------
def key_rank_first_rate(nlp, factory, n=40, **settings):
    data = planted_key_texts(n, seed=7)
    _, docs = explain(nlp, factory, [text for text, _, _ in data], **settings)
    hits = [int(numpy.argmax(next(iter(doc._.attributions[FACTORIES[factory]].values())).scores)) == at
            for doc, (_, _, at) in zip(docs, data)]
    return sum(hits) / len(hits)


def test_rollout_ranks_the_planted_key_first(planted_key_nlp):
    rate = key_rank_first_rate(planted_key_nlp, "attr_attention_rollout")
    print(f"rollout (query=mean) ranks the key first in {rate:.0%} of docs")
    assert rate >= 0.8


def test_evaluation_measures_the_attention_methods(keyword_nlp):
    """evaluate() finds the components unchanged; on the keyword textcat rollout and LAT find the sentiment
    words far more often than the random floor (measured token F1: 0.61 and 0.60 against 0.24)."""
    names = ["attr_attention_rollout", "attr_lat", "attr_random"]
    for name in names:
        keyword_nlp.add_pipe(name)
    try:
        report = evaluate(keyword_nlp, gold_docs(keyword_nlp, 40, seed=5), protocols=["eraser"], n_resamples=300,
                          diagnostics=False)
    finally:
        for name in names:
            keyword_nlp.remove_pipe(name)
    f1 = {r.method: r.estimate.value for r in report.results if r.metric == "token_f1"}
    assert f1["attention_rollout"] > f1["random"] + 0.2 and f1["lat"] > f1["random"] + 0.2


# -- settings, side effects, determinism ----------------------------------------------------------------
def test_bad_settings_fail_clearly(textcat_nlp):
    with pytest.raises(ValueError, match="heads must be"):
        make_method(textcat_nlp, "attr_attention", heads=[])
    with pytest.raises(ValueError, match="heads must be"):
        make_method(textcat_nlp, "attr_attention_rollout", heads=[1, 1])
    with pytest.raises(ValueError, match="query"):
        make_method(textcat_nlp, "attr_lat", query="max")
    with pytest.raises(ValueError, match=r"layer 2 out of range.*2 layers"):
        explain(textcat_nlp, "attr_attention", TEXTS[:1], layer=2)
    with pytest.raises(ValueError, match=r"heads \[2\] out of range"):
        explain(textcat_nlp, "attr_attention_rollout", TEXTS[:1], heads=[2])


@pytest.mark.parametrize("factory", sorted(FACTORIES))
def test_bfloat16_keeps_the_mass_and_the_float32_scores(textcat_nlp, factory):
    """Under autocast the flow matrices are still computed in float32 (measured gap to float32 on CPU:
    at most 5e-5)."""
    _, low = explain(textcat_nlp, factory, TEXTS, dtype="bfloat16")
    _, full = explain(textcat_nlp, factory, TEXTS)
    mass = 2 if factory == "attr_lat" else 1
    for low_doc, full_doc in zip(low, full):
        for got, expected in zip(iter_attributions(low_doc), iter_attributions(full_doc)):
            assert got.wordpiece_scores.dtype == numpy.float32
            assert got.wordpiece_scores.sum() == pytest.approx(mass, abs=1e-5)
            numpy.testing.assert_allclose(got.wordpiece_scores, expected.wordpiece_scores, atol=0.03)


@pytest.fixture(scope="module")
def loaded_nlp(textcat_dir):
    """The textcat pipeline loaded from disk: no .grad tensors yet (training leaves zeroed ones)."""
    return spacy.load(textcat_dir)


@pytest.mark.parametrize("factory", sorted(FACTORIES))
def test_no_side_effects_and_deterministic(loaded_nlp, factory):
    hf = loaded_nlp.get_pipe("transformer").model.transformer
    weights = weights_snapshot(loaded_nlp)
    state = (hf.config._attn_implementation, hf.attn_implementation, all_hooks(hf))
    _, first = explain(loaded_nlp, factory, TEXTS)
    _, second = explain(loaded_nlp, factory, TEXTS)
    after = weights_snapshot(loaded_nlp)
    assert after.keys() == weights.keys()
    for name, value in weights.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(after[name], value), name
        else:
            numpy.testing.assert_array_equal(after[name], value, err_msg=name)
    assert all(param.grad is None for param in hf.parameters())
    assert (hf.config._attn_implementation, hf.attn_implementation, all_hooks(hf)) == state
    for a, b in zip(first, second):
        for x, y in zip(iter_attributions(a), iter_attributions(b)):
            numpy.testing.assert_array_equal(x.wordpiece_scores, y.wordpiece_scores)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("factory", sorted(FACTORIES))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_matches_cpu(textcat_dir, loaded_nlp, factory, dtype):
    spacy.require_gpu()
    try:
        gpu_nlp = spacy.load(textcat_dir)
        component, gpu_docs = explain(gpu_nlp, factory, TEXTS, dtype=dtype)
        assert component.view.device.type == "cuda"
    finally:
        spacy.require_cpu()
    _, cpu_docs = explain(loaded_nlp, factory, TEXTS)
    tolerance = 1e-4 if dtype == "float32" else 0.03
    for gpu_doc, cpu_doc in zip(gpu_docs, cpu_docs):
        for got, expected in zip(iter_attributions(gpu_doc), iter_attributions(cpu_doc)):
            numpy.testing.assert_allclose(got.wordpiece_scores, expected.wordpiece_scores, atol=tolerance)
