"""Integrated Jacobians for Siamese encoders (Moeller, Nikolaev & Padó 2023, "An Attribution Method for
Siamese Encoders", EMNLP; code github.com/lucasmllr/xsbert).

Let e(u) ∈ R^D be the mean-pooled sentence vector (`spacy_attrib.view.embedding`) as a function of the
hidden states u ∈ R^{S×H} at the input of an encoder layer, and r the hidden states there of the reference
text ([CLS] [PAD]… [SEP], the same length, attention mask on). Along the straight path r + α(u − r):

    J_a = ∫₀¹ ∂e/∂u (r_a + α(u_a − r_a)) dα           (D × S_a·H),   e(a) − e(r_a) = J_a (u_a − r_a)
    P_a[:, i] = Σ_k J_a[:, ik] (u_a − r_a)_ik          (D × S_a: wordpiece i's share of e(a) − e(r_a))
    A_ij = Σ_d P_a[d, i] P_b[d, j]                     (S_a × S_b)

so that, for the dot product s, Σ_ij A_ij = (e(a) − e(r_a))·(e(b) − e(r_b)) = s(a, b) − s(a, r_b) −
s(r_a, b) + s(r_a, r_b). For the cosine, A is divided by ‖e(a)‖·‖e(b)‖ at the real inputs (as the official
code does). The completeness error is |Σ A − that four-term combination| (divided by the norms for the
cosine); Σ A equals s(a, b) itself only for a model whose reference embedding is zero (the paper's
shift-fine-tuned "exact" models), so the four dot-product terms are reported as well.

P_a[:, i] is a Jacobian-vector product of e along u_a − r_a restricted to wordpiece i: S_a forward-mode
JVPs per path point (`torch.autograd.forward_ad`, all of them batched as transformer rows) instead of the
official code's D backward passes (one per output dimension), so the cost scales with the number of
wordpieces, not with the embedding width. The integral is a Gauss–Legendre rule over `n_steps` points (as
our integrated gradients use; exact for polynomials of degree 2n − 1 where the official right Riemann sum
errs by O(1/n) for the same number of passes), or ``n_steps="auto"``: 8, 16, … points until the
completeness error of every pair is within `tolerance` of its four-term combination.

Wordpiece → token: both axes summed with the shares of `spacy_attrib.align` (a wordpiece aligned to k
tokens gives each 1/k); special tokens ([CLS], [SEP]) align to no token, so the token matrix omits their
rows and columns (they stay in the wordpiece matrix, whose sum is complete).
"""

from typing import Dict, List, Literal, Sequence, Tuple, Union

import numpy
import torch
import torch.autograd.forward_ad as forward_ad
from spacy.language import Language
from spacy.tokens import Doc

from ..align import WordpieceLayout
from ..attribution import Interaction
from ..view import encoder_depth
from ..view.embedding import EmbeddingView
from ..view.encoding import EncodedBatch
from .base import check_choice
from .integrated import quadrature_points

METHOD = "integrated_jacobians"
SIMILARITIES = ("cos", "dot")
REFERENCES = ("pad",)
Layer = Union[Literal["auto"], int]
Steps = Union[Literal["auto"], int]
AUTO_FIRST_STEPS = 8


def default_layer(depth: int) -> int:
    """The official demo's layer scaled to depth: its input of layer 11 of 12 (``idx = 10``) leaves two
    layers above; here ``max(1, round(depth / 6))`` layers stay above (10 of 12, 5 of 6, 1 of 2)."""
    return depth - max(1, round(depth / 6))


def explain_similarity(nlp: Language, doc_a: Doc, doc_b: Doc, **settings) -> Interaction:
    """Integrated Jacobians of the similarity of `doc_a` and `doc_b` (see `explain_similarities`)."""
    return explain_similarities(nlp, [(doc_a, doc_b)], **settings)[0]


def explain_similarities(nlp: Language, pairs: Sequence[Tuple[Doc, Doc]], *, layer: Layer = "auto",
                         n_steps: Steps = 50, reference: str = "pad", similarity: str = "cos",
                         tolerance: float = 0.01, max_steps: int = 512,
                         internal_batch_size: int = 128) -> List[Interaction]:
    """Integrated Jacobians (module docstring) of the similarity of each pair of docs, all pairs together.

    nlp: a pipeline with a spacy-transformers transformer (no head needed), whose mean-pooled output is
        the sentence embedding (`sentence_embedding` sets ``doc.vector`` to it).
    pairs: (doc_a, doc_b) pairs; a doc in several pairs is encoded and integrated once.
    layer: the attribution layer: ``"auto"`` (`default_layer`), or k in 0..depth: the hidden states after
        encoder layer k, i.e. the input of layer k + 1 (the official ``idx``); 0 is the embedding output,
        depth the last hidden state (e is linear there: one step is exact).
    n_steps: Gauss–Legendre points on the path (default 50, the official demo's N), or ``"auto"``.
    reference: ``"pad"``: [CLS] [PAD]… [SEP] of the same length.
    similarity: ``"cos"`` (default) or ``"dot"``.
    tolerance, max_steps: for ``n_steps="auto"``, the completeness error allowed relative to the four-term
        combination, and the most points tried.
    internal_batch_size: transformer rows (doc windows × wordpieces × path points) per forward pass.
    Returns one `Interaction` per pair: the token and wordpiece matrices, ``output`` s(a, b), and in
    ``extras`` the ``reference_terms`` (four dot products), ``target`` (their combination, normalised for
    the cosine), ``error`` (|Σ A − target|), ``n_steps``, ``layer``, ``similarity``.
    """
    check_choice("similarity", similarity, SIMILARITIES)
    check_choice("reference", reference, REFERENCES)
    depth = encoder_depth(nlp)
    if layer == "auto":
        layer = default_layer(depth)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= depth:
        raise ValueError(f"layer must be 'auto' or an integer in 0..{depth}, got {layer!r}")
    if n_steps != "auto" and (isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1):
        raise ValueError(f"n_steps must be 'auto' or a positive integer, got {n_steps!r}")
    if n_steps == "auto" and not (tolerance > 0 and max_steps >= AUTO_FIRST_STEPS):
        raise ValueError(f"n_steps='auto' needs tolerance > 0 and max_steps >= {AUTO_FIRST_STEPS}, "
                         f"got {tolerance!r} and {max_steps!r}")
    if internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be at least 1, got {internal_batch_size}")
    docs, pair_index = unique_docs(pairs)
    view = EmbeddingView(nlp, layer)
    batch = view.encode(docs)
    empty = [doc.text for d, doc in enumerate(docs) if not batch.rows[d]]
    if empty:
        raise ValueError(f"explain_similarity needs docs the transformer sees wordpieces of, got {empty!r}")
    with torch.no_grad():
        inputs = view.capture(batch)
        baseline = view.capture(batch, view.pad_reference_ids(batch))
        embeddings, reference_embeddings = view.embed(batch, inputs), view.embed(batch, baseline)
    terms = [reference_terms(embeddings, reference_embeddings, a, b, similarity) for a, b in pair_index]
    layouts = [batch.layout(d) for d in range(len(docs))]
    steps = AUTO_FIRST_STEPS if n_steps == "auto" else n_steps
    while True:
        projections = token_projections(view, batch, layouts, inputs, baseline, steps, internal_batch_size)
        matrices = [projections[a].T @ projections[b] / term["scale"] for (a, b), term in zip(pair_index, terms)]
        errors = [abs(float(m.sum()) - term["target"]) for m, term in zip(matrices, terms)]
        converged = all(e <= tolerance * max(abs(t["target"]), 1e-12) for e, t in zip(errors, terms))
        if n_steps != "auto" or converged or steps * 2 > max_steps:
            break
        steps *= 2
    settings = {"layer": layer, "n_steps": steps, "reference": reference, "similarity": similarity}
    return [interaction(docs[a], docs[b], layouts[a], layouts[b], matrix.cpu().numpy(), term, error, settings)
            for (a, b), matrix, term, error in zip(pair_index, matrices, terms, errors)]


def unique_docs(pairs: Sequence[Tuple[Doc, Doc]]) -> Tuple[List[Doc], List[Tuple[int, int]]]:
    """The distinct docs of the pairs (by identity, in order) and each pair's two indices into them."""
    docs: List[Doc] = []
    index: Dict[int, int] = {}
    for doc in (doc for pair in pairs for doc in pair):
        if id(doc) not in index:
            index[id(doc)] = len(docs)
            docs.append(doc)
    return docs, [(index[id(a)], index[id(b)]) for a, b in pairs]


def reference_terms(embeddings: torch.Tensor, references: torch.Tensor, a: int, b: int, similarity: str) -> Dict:
    """The four dot products of the real and reference embeddings of docs a and b; their combination (the
    completeness target), the scale A is divided by (‖e(a)‖‖e(b)‖ for the cosine, else 1) and s(a, b)."""
    e_a, e_b, r_a, r_b = embeddings[a], embeddings[b], references[a], references[b]
    dots = {"s(a,b)": float(e_a @ e_b), "s(a,r_b)": float(e_a @ r_b), "s(r_a,b)": float(r_a @ e_b),
            "s(r_a,r_b)": float(r_a @ r_b)}
    scale = float(e_a.norm() * e_b.norm()) if similarity == "cos" else 1.0
    target = float((e_a - r_a) @ (e_b - r_b)) / scale
    return {"dots": dots, "scale": scale, "target": target, "output": dots["s(a,b)"] / scale}


def token_projections(view: EmbeddingView, batch: EncodedBatch, layouts: List[WordpieceLayout],
                      inputs: torch.Tensor, baseline: torch.Tensor, n_steps: int, max_rows: int) -> List[torch.Tensor]:
    """P for every doc, (D, real wordpieces of the doc): P[:, i] = Σ_n w_n ∂e/∂u(r + α_n Δ) · Δ_i, with
    Δ = u − r and Δ_i its row of wordpiece i alone, one forward-mode JVP per (doc, wordpiece, point).

    An instance is a copy of a doc's rows at one path point with the tangent Δ_i; instances of all docs
    run together, at most `max_rows` transformer rows per pass (at least one instance)."""
    device = inputs.device
    alphas, weights = (torch.as_tensor(v, dtype=inputs.dtype, device=device)
                       for v in quadrature_points(n_steps, "gausslegendre"))
    difference = inputs - baseline
    offsets = numpy.concatenate([[0], numpy.cumsum([len(layout.positions) for layout in layouts])])
    # Instances (doc, column of P over all docs, flat position in the doc's rows, path point).
    instances = [(d, offsets[d] + i, int(p), n) for d, layout in enumerate(layouts)
                 for i, p in enumerate(layout.positions) for n in range(n_steps)]
    projections = torch.zeros((inputs.shape[-1], int(offsets[-1])), dtype=inputs.dtype, device=device)
    start = 0
    while start < len(instances):
        end, rows = start, 0
        while end < len(instances) and (end == start or rows + batch.rows[instances[end][0]] <= max_rows):
            rows += batch.rows[instances[end][0]]
            end += 1
        chunk = instances[start:end]
        start = end
        doc_index = [d for d, _, _, _ in chunk]
        rows_of = batch.row_index(doc_index)
        counts = torch.tensor([batch.rows[d] for d in doc_index], device=device)
        first_row = torch.cumsum(counts, 0) - counts
        alpha = torch.repeat_interleave(alphas[[n for _, _, _, n in chunk]], counts).view(-1, 1, 1)
        primal = baseline[rows_of] + alpha * difference[rows_of]
        positions = torch.tensor([p for _, _, p, _ in chunk], device=device)
        row = first_row + positions // batch.width
        column = positions % batch.width
        source_row = torch.tensor([batch.row_starts[d] for d in doc_index], device=device) + positions // batch.width
        tangent = torch.zeros_like(primal)
        tangent[row, column] = difference[source_row, column]
        with torch.no_grad(), forward_ad.dual_level(), view.forward_mode():
            jvp = forward_ad.unpack_dual(view.embed(batch, forward_ad.make_dual(primal, tangent), doc_index)).tangent
        weighted = jvp * weights[[n for _, _, _, n in chunk]].unsqueeze(-1)
        projections.index_add_(1, torch.tensor([c for _, c, _, _ in chunk], device=device), weighted.T)
    return [projections[:, offsets[d]:offsets[d + 1]] for d in range(len(layouts))]


def token_shares(layout: WordpieceLayout) -> numpy.ndarray:
    """(tokens, wordpieces): 1/k where a wordpiece is aligned to k tokens, the sum aggregation of
    `spacy_attrib.align` as a matrix, for both axes of the interaction."""
    shares = numpy.zeros((len(layout.alignment), len(layout.positions)), dtype="float32")
    for t, pieces in enumerate(layout.alignment):
        shares[t, pieces] = 1.0
    return shares / numpy.maximum(shares.sum(0, keepdims=True), 1)


def interaction(doc_a: Doc, doc_b: Doc, layout_a: WordpieceLayout, layout_b: WordpieceLayout,
                wordpiece_matrix: numpy.ndarray, term: Dict, error: float, settings: Dict) -> Interaction:
    matrix = token_shares(layout_a) @ wordpiece_matrix @ token_shares(layout_b).T
    extras = {**settings, "reference_terms": term["dots"], "target": term["target"], "error": error}
    return Interaction(METHOD, matrix, tuple(t.text for t in doc_a), tuple(t.text for t in doc_b), wordpiece_matrix,
                       list(layout_a.strings), list(layout_b.strings), layout_a.alignment, layout_b.alignment,
                       term["output"], extras)


def d_loop_projections(view: EmbeddingView, batch: EncodedBatch, inputs: torch.Tensor, baseline: torch.Tensor,
                       n_steps: int, d: int) -> torch.Tensor:
    """P of doc `d` by the official route (xsbert `_compute_integrated_jacobian`), kept as the reference the
    tests and `bench/similarity.py` compare `token_projections` with: for each output dimension, one backward
    pass per path point gives a row of J; then P = J · (u − r) summed over the hidden axis. D backward passes
    per point, where the JVP route needs one forward pass per wordpiece and point."""
    alphas, weights = quadrature_points(n_steps, "gausslegendre")
    rows = batch.row_index([d])
    difference = (inputs - baseline)[rows]
    jacobian = None
    for alpha, weight in zip(alphas, weights):
        point = (baseline[rows] + float(alpha) * difference).requires_grad_()
        embedding = view.embed(batch, point, [d])[0]
        grads = torch.stack([torch.autograd.grad(embedding[k], point, retain_graph=True)[0]
                             for k in range(embedding.shape[0])])
        jacobian = weight * grads if jacobian is None else jacobian + weight * grads
    flat = (jacobian * difference).sum(-1).reshape(jacobian.shape[0], -1)
    return flat[:, torch.as_tensor(batch.layout(d).positions)]
