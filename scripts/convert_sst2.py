"""Convert one SST-2 file into a DocBin with gold ``doc.cats`` (``POS``/``NEG``, exclusive).

Format: tab-separated ``label<TAB>sentence`` with a header row (GLUE's SST-2 ``train.tsv`` and
``dev.tsv``; this copy's header is ``label<TAB>content``), 1 = positive, 0 = negative; the sentences
come lower-cased and tokenized. Read by :func:`spacy_attrib.corpora.read_sst2` (tokens of
``spacy.blank("en")``).

Source: the Stanford Sentiment Treebank's binary sentences (Socher et al., 2013, "Recursive Deep Models
for Semantic Compositionality Over a Sentiment Treebank") as released in GLUE (Wang et al., 2018).

    python scripts/convert_sst2.py ../shared/data/sst2/dev.tsv corpus/sst2_dev.spacy [--limit 200]
"""

from collections import Counter
from pathlib import Path
from typing import Optional

import spacy
import typer
from wasabi import msg

from _convert import require_file, require_limit, write_docs
from spacy_attrib.corpora import read_sst2


def main(
    input_path: Path = typer.Argument(..., help="SST-2 .tsv file (label<TAB>sentence, with header)"),
    output_path: Path = typer.Argument(..., help="Output .spacy file"),
    limit: Optional[int] = typer.Option(None, "--limit", "-l", help="Only the first N sentences"),
):
    require_file(input_path, "SST-2")
    require_limit(limit)
    try:
        docs = read_sst2(input_path, spacy.blank("en"), limit=limit)
    except ValueError as err:
        msg.fail(str(err), exits=1)
    write_docs(docs, output_path)
    counts = Counter(max(doc.cats, key=doc.cats.get) for doc in docs)
    msg.good(f"Wrote {len(docs)} docs to {output_path} ({counts['POS']} POS, {counts['NEG']} NEG)")


if __name__ == "__main__":
    typer.run(main)
