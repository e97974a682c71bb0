"""Write evaluation corpora as DocBins (gold ``doc.cats``; ERASER's human rationales in
``doc.spans["rationale"]``) for ``spacy-attrib evaluate``.

    python scripts/convert_corpora.py sst2 ../shared/data/sst2/dev.tsv corpus/sst2_dev.spacy
    python scripts/convert_corpora.py eraser ../shared/data/eraser-movies corpus/eraser_val50.spacy --split val --limit 50 --seed 0
"""

from pathlib import Path
from typing import Optional

import spacy
import typer
from spacy.tokens import DocBin
from wasabi import msg

from spacy_attrib.corpora import read_eraser_movies, read_sst2


def main(corpus: str = typer.Argument(..., help="sst2 or eraser"), source: Path = typer.Argument(...),
         output: Path = typer.Argument(...), split: str = typer.Option("val", help="ERASER split"),
         limit: Optional[int] = typer.Option(None), seed: Optional[int] = typer.Option(None, help="ERASER sample seed")):
    nlp = spacy.blank("en")
    if corpus == "sst2":
        docs = read_sst2(source, nlp, limit=limit)
    elif corpus == "eraser":
        docs = read_eraser_movies(source, split, nlp, limit=limit, seed=seed)
    else:
        msg.fail(f"Unknown corpus {corpus!r}: sst2 or eraser", exits=1)
    output.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=docs, store_user_data=True).to_disk(output)
    msg.good(f"Wrote {len(docs)} docs to {output}")


if __name__ == "__main__":
    typer.run(main)
