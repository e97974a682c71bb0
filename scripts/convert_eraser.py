"""Convert one split of ERASER Movie Reviews into a DocBin: gold ``doc.cats`` (``POS``/``NEG``, exclusive),
the human rationales in ``doc.spans["rationale"]`` and the review's id in ``doc.user_data["annotation_id"]``.

Format: ERASER's directory layout, ``{train,val,test}.jsonl`` (one annotation per line: ``annotation_id``,
``classification``, ``evidences`` with token offsets) and ``docs/<annotation_id>`` (the pre-tokenized
review, one sentence per line). Read by :func:`spacy_attrib.corpora.read_eraser_movies`: the tokens are
ERASER's own (``text.split()``), so the evidence offsets index them; each line starts a sentence.

Source: ERASER (DeYoung et al., 2020, "ERASER: A Benchmark to Evaluate Rationalized NLP Models"): the
Pang & Lee movie reviews with the rationales of Zaidan et al. (2007, "Using 'Annotator Rationales' to
Improve Machine Learning for Text Categorization"); test rationales by the ERASER authors.

    python scripts/convert_eraser.py ../shared/data/eraser-movies corpus/eraser_val.spacy --split val [--limit 50 --seed 0]

``--limit N`` keeps the first N annotations of the split, or with ``--seed`` a reproducible random sample
of N (``random.Random(seed).sample``, in sampled order); ``--seed`` alone has no effect.
"""

from collections import Counter
from pathlib import Path
from typing import Optional

import spacy
import typer
from wasabi import msg

from _convert import require_limit, write_docs
from spacy_attrib.corpora import ERASER_SPLITS, RATIONALE, read_eraser_movies


def main(
    input_dir: Path = typer.Argument(..., help="ERASER movies directory ({split}.jsonl and docs/)"),
    output_path: Path = typer.Argument(..., help="Output .spacy file"),
    split: str = typer.Option("val", "--split", "-s", help=f"Split: {', '.join(ERASER_SPLITS)}"),
    limit: Optional[int] = typer.Option(None, "--limit", "-l", help="Only N annotations"),
    seed: Optional[int] = typer.Option(None, "--seed", help="With --limit: a random sample of N with this seed"),
):
    if not input_dir.is_dir():
        msg.fail(f"ERASER Movie Reviews directory not found: {input_dir}", exits=1)
    if split not in ERASER_SPLITS:
        msg.fail(f"Unknown --split {split!r}: {', '.join(ERASER_SPLITS)}", exits=1)
    require_limit(limit)
    try:
        docs = read_eraser_movies(input_dir, split, spacy.blank("en"), limit=limit, seed=seed)
    except (OSError, ValueError, KeyError) as err:
        msg.fail(f"ERASER {input_dir} ({split}): {err}", exits=1)
    write_docs(docs, output_path)
    counts = Counter(max(doc.cats, key=doc.cats.get) for doc in docs)
    n_spans = sum(len(doc.spans[RATIONALE]) for doc in docs)
    msg.good(f"Wrote {len(docs)} docs to {output_path} ({counts['POS']} POS, {counts['NEG']} NEG; "
             f"{n_spans} rationale spans)")


if __name__ == "__main__":
    typer.run(main)
