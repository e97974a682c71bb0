"""Convert GLUE RTE into a DocBin of sentence-pair docs with gold ``doc.cats`` (``entailment`` /
``not_entailment``, exclusive).

Each pair is one Doc ``sentence1 [SEP] sentence2`` made by :func:`spacy_attrib.make_pair` (tokens of
``spacy.blank("en")``; ``--separator`` is the transformer's separator token, ``[SEP]`` for BERT, ``</s>``
for RoBERTa); ``doc.user_data`` records the separator's token index, so the DocBin is written with
``store_user_data=True``.

Format: GLUE's tab-separated files with the header ``index sentence1 sentence2 label``, read without quote
handling (``csv.QUOTE_NONE``: a sentence may begin with ``"``, as train row 2164 does). GLUE's test split
has no ``label`` column: such a file is refused, since docs without gold cats can be neither trained nor
evaluated on.

Source: Recognizing Textual Entailment (RTE1-3 and RTE5: Dagan et al., 2006, "The PASCAL Recognising
Textual Entailment Challenge"; Bar Haim et al., 2006; Giampiccolo et al., 2007; Bentivogli et al., 2009)
as merged in GLUE (Wang et al., 2018, "GLUE: A Multi-Task Benchmark and Analysis Platform for Natural
Language Understanding").

    python scripts/convert_rte.py ../shared/data/rte/train.tsv corpus/rte_train.spacy [--limit 1000 --separator "[SEP]"]
"""

from collections import Counter
from pathlib import Path
from typing import Optional

import spacy
import typer
from wasabi import msg

from _convert import read_tsv, require_file, require_limit, require_separator, write_docs
from spacy_attrib import make_pair

LABELS = ("entailment", "not_entailment")
COLUMNS = ("sentence1", "sentence2", "label")


def main(
    input_path: Path = typer.Argument(..., help="GLUE RTE .tsv file (train.tsv or dev.tsv)"),
    output_path: Path = typer.Argument(..., help="Output .spacy file"),
    limit: Optional[int] = typer.Option(None, "--limit", "-l", help="Only the first N pairs"),
    separator: str = typer.Option("[SEP]", "--separator", help="Token between the two sentences"),
):
    require_file(input_path, "RTE")
    require_limit(limit)
    require_separator(separator)
    rows = read_tsv(input_path)
    header = rows[0] if rows else []
    if "sentence1" in header and "label" not in header:
        msg.fail(f"{input_path} has no label column (GLUE's RTE test split is unlabelled): "
                 f"convert train.tsv or dev.tsv", exits=1)
    if not all(column in header for column in COLUMNS):
        msg.fail(f"{input_path} has no GLUE RTE header (index, sentence1, sentence2, label): {header}", exits=1)
    first, second, gold = (header.index(column) for column in COLUMNS)
    nlp = spacy.blank("en")
    docs = []
    for number, row in enumerate(rows[1:], 2):
        if limit is not None and len(docs) == limit:
            break
        if len(row) != len(header) or row[gold] not in LABELS:
            msg.fail(f"{input_path} line {number} is not {len(header)} tab-separated fields with a label "
                     f"{' or '.join(LABELS)}: {row}", exits=1)
        try:
            doc = make_pair(nlp, row[first], row[second], separator=separator)
        except ValueError as err:
            msg.fail(f"{input_path} line {number}: {err}", exits=1)
        doc.cats = {label: float(label == row[gold]) for label in LABELS}
        docs.append(doc)
    write_docs(docs, output_path)
    counts = Counter(max(doc.cats, key=doc.cats.get) for doc in docs)
    msg.good(f"Wrote {len(docs)} pair docs to {output_path} "
             f"({', '.join(f'{counts[label]} {label}' for label in LABELS)})")


if __name__ == "__main__":
    typer.run(main)
