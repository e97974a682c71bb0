"""The integrated-Jacobians pilot study (Moeller et al. 2023, §3.3 of the method notes) on STS-B pairs with
all-MiniLM-L6-v2 as it is (a sentence encoder: no training), written as results.json, report.md, and
heatmaps (PNG and one HTML page) of the first pairs.

    python scripts/similarity_study.py STS_TSV OUTPUT_DIR [--limit 100] [--steps 1,2,4,8,16,50]

STS_TSV is STS-B in the original distribution's format (genre, file, year, id, score, sentence 1,
sentence 2; ``sts-test.tsv``) or GLUE's (a header row, the score and the sentences in the last three
columns). The study measures:

- completeness against ``n_steps``: the mean, median and largest |Σ A − target| over the pairs, relative
  to |target| (the four-term combination of the off-the-shelf model, whose reference terms are not 0),
  and the seconds per pair;
- how much of the explained total the largest token pairs hold: for k = 1, 3, 5, 10, the mean over pairs
  of Σ of the k largest |A_ij| / Σ |A_ij|, and the share of token pairs needed for 90 % of Σ |A_ij|;
- what the largest pairs join. spaCy's tagger needs a trained pipeline, which is not here offline, so
  tokens are classed by spaCy's lexical attributes instead of by part of speech: punctuation
  (``is_punct``), function words (``is_stop``, spaCy's English stop-word list) and content words (the
  rest, mostly nouns, verbs and adjectives). The paper's finding to compare with: the encoder's largest
  pairs join nouns and verbs, yet a prediction needs most tokens;
- the model itself: Spearman's ρ between s(a, b) and the gold scores.
"""

import json
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy
import spacy
import typer
from spacy.language import Language
from wasabi import msg

from spacy_attrib import explain_similarities
from spacy_attrib.evaluation.statistics import spearman
from spacy_attrib.render import interaction_figure, render_interaction
from spacy_attrib.training import transformer_name

TOP_K = (1, 3, 5, 10)
N_HEATMAPS = 3


def read_pairs(path: Path, limit: int) -> List[Tuple[str, str, float]]:
    """(sentence 1, sentence 2, gold score) from an STS-B TSV, original or GLUE format."""
    lines = path.read_text(encoding="utf8").splitlines()
    glue = bool(lines) and lines[0].startswith("index\t")
    pairs = []
    for line in lines[1:] if glue else lines:
        fields = line.split("\t")
        # GLUE: …, sentence1, sentence2, score; original: genre, file, year, id, score, s1, s2 (then sources)
        a, b, score = fields[-3:] if glue else (fields[5], fields[6], fields[4])
        pairs.append((a, b, float(score)))
        if len(pairs) == limit:
            break
    return pairs


def encoder_pipeline(transformer: str) -> Language:
    """The sentence encoder as a spaCy pipeline: its transformer (one window per doc: STS sentences are short)
    and `sentence_embedding`, nothing trained."""
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3", "name": transformer_name(transformer),
        "tokenizer_config": {"use_fast": True}, "get_spans": {"@span_getters": "spacy-transformers.doc_spans.v1"}}})
    nlp.add_pipe("sentence_embedding")
    nlp.initialize()
    return nlp


def word_class(token) -> str:
    return "punctuation" if token.is_punct else "function" if token.is_stop else "content"


def top_k_shares(matrix: numpy.ndarray) -> Dict[str, float]:
    magnitudes = numpy.sort(numpy.abs(matrix).reshape(-1))[::-1]
    total = magnitudes.sum()
    shares = {f"top_{k}": float(magnitudes[:k].sum() / total) for k in TOP_K}
    shares["pairs_for_90_percent"] = float((numpy.searchsorted(numpy.cumsum(magnitudes), 0.9 * total) + 1)
                                           / magnitudes.size)
    return shares


def main(data: Path = typer.Argument(..., help="STS-B TSV (sts-test.tsv or GLUE's dev.tsv)"),
         output: Path = typer.Argument(..., help="Directory for results.json, report.md and the heatmaps"),
         transformer: str = typer.Option("all-MiniLM-L6-v2", help="The sentence encoder (alias, HF name, path)"),
         limit: int = typer.Option(100, help="Pairs studied (the first N)"),
         steps: str = typer.Option("1,2,4,8,16,50", help="Comma-separated n_steps to measure completeness at"),
         largest: int = typer.Option(5, help="Token pairs per pair classed in the word-class table")):
    if not data.exists():
        msg.fail(f"STS-B file not found: {data}", exits=1)
    pairs = read_pairs(data, limit)
    if not pairs:
        msg.fail(f"{data} holds no pairs", exits=1)
    nlp = encoder_pipeline(transformer)
    docs = [(nlp(a), nlp(b)) for a, b, _ in pairs]
    n_steps = [int(s) for s in steps.split(",")]
    completeness = []
    results = None
    for n in n_steps:
        start = time.perf_counter()
        results = explain_similarities(nlp, docs, n_steps=n)
        seconds = (time.perf_counter() - start) / len(docs)
        relative = numpy.asarray([r.extras["error"] / max(abs(r.extras["target"]), 1e-12) for r in results])
        completeness.append({"n_steps": n, "mean": float(relative.mean()), "median": float(numpy.median(relative)),
                             "max": float(relative.max()), "seconds_per_pair": seconds})
        msg.info(f"n_steps {n}: relative completeness error mean {relative.mean():.2e}, max {relative.max():.2e} "
                 f"({seconds:.2f} s per pair)")
    shares = [top_k_shares(r.matrix) for r in results]
    concentration = {key: float(numpy.mean([s[key] for s in shares])) for key in shares[0]}
    classes: Dict[str, int] = {}
    identical = 0
    for (a, b), r in zip(docs, results):
        order = numpy.argsort(-numpy.abs(r.matrix).reshape(-1))[:largest]
        for flat in order:
            i, j = divmod(int(flat), r.matrix.shape[1])
            key = " – ".join(sorted((word_class(a[i]), word_class(b[j]))))
            classes[key] = classes.get(key, 0) + 1
            identical += a[i].lower_ == b[j].lower_
    n_largest = sum(classes.values())
    rho = spearman(numpy.asarray([r.output for r in results]), numpy.asarray([g for _, _, g in pairs]))
    output.mkdir(parents=True, exist_ok=True)
    for k, r in enumerate(results[:N_HEATMAPS]):
        interaction_figure(r).savefig(output / f"pair_{k}.png", dpi=120, bbox_inches="tight")
    (output / "heatmaps.html").write_text(render_interaction(results[:N_HEATMAPS], page=True, jupyter=False),
                                          encoding="utf8")
    summary = {"data": str(data), "pairs": len(pairs), "transformer": transformer, "layer": results[0].extras["layer"],
               "spearman_with_gold": rho, "completeness": completeness, "concentration": concentration,
               "largest_pairs": {"per_pair": largest, "classes": classes, "identical_words": identical / n_largest}}
    (output / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf8")
    lines = [f"# Integrated Jacobians on {len(pairs)} STS-B pairs ({transformer}, layer {summary['layer']})", "",
             f"Spearman ρ of the cosine similarity with the gold scores: {rho if rho is None else round(rho, 3)}", "",
             "| n_steps | mean relative error | median | max | seconds per pair |", "|---|---|---|---|---|"]
    lines += [f"| {c['n_steps']} | {c['mean']:.2e} | {c['median']:.2e} | {c['max']:.2e} | {c['seconds_per_pair']:.3f} |"
              for c in completeness]
    lines += ["", f"Share of Σ|A| in the largest token pairs (at n_steps {n_steps[-1]}, mean over pairs):", "",
              "| " + " | ".join(concentration) + " |", "|" + "---|" * len(concentration),
              "| " + " | ".join(f"{v:.3f}" for v in concentration.values()) + " |", "",
              f"What the {largest} largest pairs of each pair join (word classes from spaCy's lexical attributes; "
              f"{identical / n_largest:.0%} join the same word):", "", "| classes | share |", "|---|---|"]
    lines += [f"| {key} | {count / n_largest:.3f} |" for key, count in sorted(classes.items(), key=lambda kv: -kv[1])]
    lines += [""] + [f"![pair {k}](pair_{k}.png)" for k in range(min(N_HEATMAPS, len(results)))]
    (output / "report.md").write_text("\n".join(lines) + "\n", encoding="utf8")
    msg.good(f"Wrote {output / 'report.md'}, results.json and {min(N_HEATMAPS, len(results))} heatmaps")


if __name__ == "__main__":
    typer.run(main)
