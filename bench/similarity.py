"""Integrated Jacobians: the forward-mode (JVP) route against the official D-loop route, time per pair on
the same pairs in one run, and their agreement.

    python bench/similarity.py [STS_TSV] [--transformer all-MiniLM-L6-v2] [--n-pairs 3] [--n-steps 8]

The JVP route (`spacy_attrib.explain_similarities`) runs one forward-mode pass per wordpiece and path point,
all pairs' docs batched; the D-loop (`methods.similarity.d_loop_projections`, the official code's
`_compute_integrated_jacobian`) one backward pass per output dimension (384 for MiniLM) and path point, per
doc. Both integrate with the same Gauss–Legendre points, so their matrices agree to float error.
"""

import time
from pathlib import Path

import numpy
import torch
import typer

from spacy_attrib import explain_similarities
from spacy_attrib.methods.similarity import d_loop_projections, default_layer
from spacy_attrib.view import encoder_depth
from spacy_attrib.view.embedding import EmbeddingView


def main(data: Path = typer.Argument(Path("../shared/data/stsb/original/sts-test.tsv"), help="STS-B TSV"),
         transformer: str = typer.Option("all-MiniLM-L6-v2", help="The sentence encoder"),
         n_pairs: int = typer.Option(3, help="Pairs timed"),
         n_steps: int = typer.Option(8, help="Path points (both routes cost in proportion to them)")):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from similarity_study import encoder_pipeline, read_pairs

    nlp = encoder_pipeline(transformer)
    pairs = [(nlp(a), nlp(b)) for a, b, _ in read_pairs(data, n_pairs)]
    explain_similarities(nlp, pairs[:1], n_steps=2)  # warm-up
    start = time.perf_counter()
    results = explain_similarities(nlp, pairs, n_steps=n_steps, similarity="dot")
    jvp = (time.perf_counter() - start) / len(pairs)
    view = EmbeddingView(nlp, default_layer(encoder_depth(nlp)))
    start = time.perf_counter()
    differences = []
    for (a, b), result in zip(pairs, results):
        batch = view.encode([a, b])
        with torch.no_grad():
            inputs, baseline = view.capture(batch), view.capture(batch, view.pad_reference_ids(batch))
        with view.frozen():
            p_a, p_b = (d_loop_projections(view, batch, inputs, baseline, n_steps, d) for d in (0, 1))
        expected = (p_a.T @ p_b).detach().numpy()
        differences.append(float(numpy.abs(expected - result.wordpiece_matrix).max() / numpy.abs(expected).max()))
    d_loop = (time.perf_counter() - start) / len(pairs)
    print(f"{len(pairs)} pairs, {n_steps} points, layer {results[0].extras['layer']}: JVP route {jvp:.2f} s/pair, "
          f"D-loop {d_loop:.2f} s/pair ({d_loop / jvp:.1f}× the JVP route); largest relative difference "
          f"{max(differences):.1e}")


if __name__ == "__main__":
    typer.run(main)
