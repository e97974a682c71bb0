"""Convert STS-B into a DocBin of sentence-pair docs with the gold similarity score (a float in [0, 5]) in
``doc.user_data["similarity"]``, for Siamese / regression work (no ``doc.cats``).

Each pair is one Doc ``sentence1 [SEP] sentence2`` made by :func:`spacy_attrib.make_pair` (tokens of
``spacy.blank("en")``, surrounding whitespace stripped); ``doc.user_data`` also records the separator's
token index, so the DocBin is written with ``store_user_data=True``.

Formats (tab-separated, read without quote handling, ``csv.QUOTE_NONE``), told apart by GLUE's header:

- GLUE (``glue/{train,dev}.tsv``): header ``index genre filename year old_index source1 source2 sentence1
  sentence2 score``. GLUE's ``test.tsv`` has no ``score`` column and is refused; the original
  ``sts-test.tsv`` has the same pairs with gold scores.
- The original STS benchmark (``original/sts-{train,dev,test}.tsv``): no header; ``genre filename year id
  score sentence1 sentence2``, and on some lines two more source columns.

Source: the STS Benchmark (Cer et al., 2017, "SemEval-2017 Task 1: Semantic Textual Similarity
Multilingual and Crosslingual Focused Evaluation"), pairs of the SemEval STS tasks 2012-2017, as also
distributed in GLUE (Wang et al., 2018).

    python scripts/convert_stsb.py ../shared/data/stsb/glue/train.tsv corpus/stsb_train.spacy [--limit 1000 --separator "[SEP]"]
    python scripts/convert_stsb.py ../shared/data/stsb/original/sts-test.tsv corpus/stsb_test.spacy
"""

from pathlib import Path
from typing import Optional

import spacy
import typer
from wasabi import msg

from _convert import read_tsv, require_file, require_limit, require_separator, write_docs
from spacy_attrib import make_pair

SIMILARITY = "similarity"
ORIGINAL_COLUMNS = (4, 5, 6)  # score, sentence1, sentence2 of the original files


def main(
    input_path: Path = typer.Argument(..., help="STS-B .tsv file (GLUE or original STS benchmark)"),
    output_path: Path = typer.Argument(..., help="Output .spacy file"),
    limit: Optional[int] = typer.Option(None, "--limit", "-l", help="Only the first N pairs"),
    separator: str = typer.Option("[SEP]", "--separator", help="Token between the two sentences"),
):
    require_file(input_path, "STS-B")
    require_limit(limit)
    require_separator(separator)
    rows = read_tsv(input_path)
    glue = bool(rows) and rows[0][:1] == ["index"]
    if glue:
        header = rows.pop(0)
        if "score" not in header:
            msg.fail(f"{input_path} has no score column (GLUE's STS-B test split is unscored): use the "
                     f"original sts-test.tsv, which has the gold scores", exits=1)
        if "sentence1" not in header or "sentence2" not in header:
            msg.fail(f"{input_path}: GLUE header without sentence1 and sentence2: {header}", exits=1)
        score, first, second = (header.index(column) for column in ("score", "sentence1", "sentence2"))
        n_fields = (len(header),)
    else:
        score, first, second = ORIGINAL_COLUMNS
        n_fields = (7, 9)
    nlp = spacy.blank("en")
    docs = []
    for number, row in enumerate(rows, 1 + glue):
        if limit is not None and len(docs) == limit:
            break
        try:
            value = float(row[score]) if len(row) in n_fields else None
        except ValueError:
            value = None
        if value is None or not 0.0 <= value <= 5.0:
            msg.fail(f"{input_path} line {number} is not {' or '.join(map(str, n_fields))} tab-separated "
                     f"fields with a score in [0, 5] in column {score + 1}: {row}", exits=1)
        try:
            doc = make_pair(nlp, row[first], row[second], separator=separator)
        except ValueError as err:
            msg.fail(f"{input_path} line {number}: {err}", exits=1)
        doc.user_data[SIMILARITY] = value
        docs.append(doc)
    write_docs(docs, output_path)
    mean = sum(doc.user_data[SIMILARITY] for doc in docs) / max(len(docs), 1)
    msg.good(f"Wrote {len(docs)} pair docs to {output_path}" + (f" (mean similarity {mean:.2f})" if docs else ""))


if __name__ == "__main__":
    typer.run(main)
