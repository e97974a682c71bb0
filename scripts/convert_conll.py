"""Convert CoNLL-2003 NER data into a DocBin with gold ``doc.ents`` (PER, ORG, LOC, MISC), sentence starts and
the POS column as ``token.tag_``; ``--n-sents`` sentences per Doc.

Format: one token a line, whitespace-separated columns ``token POS chunk NER`` (spaCy also reads two or
three columns: the first is the token, the last the NER tag, a second one of three the tag); a blank line
ends a sentence; a ``-DOCSTART-`` line (``-DOCSTART- -X- -X- O`` in CoNLL-2003) starts a document. The
NER tags are IOB2 (``B-`` starts every entity) or IOB1 (``I-`` after ``O`` or another type starts one):
both give the same entities. Every line is checked first: the same number of columns throughout, an NER
tag ``O``, ``B-TYPE`` or ``I-TYPE``; a malformed line fails with its number.

The entities come from spaCy's own converter, ``spacy.training.converters.conll_ner_to_docs`` (what
``spacy convert -c ner`` runs), fed sentence groups that this script delimits: spaCy's converter only
knows the delimiter ``-DOCSTART- -X- O O``, so it would take CoNLL-2003's ``-DOCSTART- -X- -X- O`` lines
for tokens, and it drops ``-n`` when a file has delimiters. Here, ``--n-sents`` sentences make a Doc,
as ``spacy convert -n`` does, and a ``-DOCSTART-`` also ends one, so no Doc spans two documents (a
document's last Doc may have fewer sentences); ``--n-sents 0`` makes one Doc per document.

Source: the CoNLL-2003 shared task, English (Tjong Kim Sang & De Meulder, 2003, "Introduction to the
CoNLL-2003 Shared Task: Language-Independent Named Entity Recognition"), Reuters RCV1 news. The copy in
``../shared/data/conll2003`` has no ``-DOCSTART-`` lines, so its Docs are groups of consecutive sentences.

    python scripts/convert_conll.py ../shared/data/conll2003/train.txt corpus/conll_train.spacy [--limit 100 --n-sents 10]

``--limit N`` keeps the first N Docs.
"""

import re
from collections import Counter
from pathlib import Path
from typing import List, Optional

import typer
from spacy.training.converters import conll_ner_to_docs
from wasabi import msg

from _convert import require_file, require_limit, write_docs

DOCSTART = "-DOCSTART-"
SPACY_DELIMITER = "-DOCSTART- -X- O O"  # the only document delimiter conll_ner_to_docs knows
TAG = re.compile(r"O|[BI]-\S+")

Sentence = List[str]  # its token lines


def read_documents(path: Path) -> List[List[Sentence]]:
    """The documents of `path`, each a list of sentences, each a list of token lines; checks every line."""
    documents: List[List[Sentence]] = [[]]
    sentence: Sentence = []
    n_columns = None
    for number, line in enumerate(path.read_text(encoding="utf8").splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            if sentence:
                documents[-1].append(sentence)
                sentence = []
            if fields and documents[-1]:
                documents.append([])
            continue
        if number == 1 and fields[0] == "-TOKEN-":  # a header line that some copies have
            continue
        n_columns = n_columns or len(fields)
        if len(fields) != n_columns or n_columns < 2:
            raise ValueError(f"{path} line {number} has {len(fields)} columns, not {max(n_columns, 2)} "
                             f"(token ... NER): {line!r}")
        if not TAG.fullmatch(fields[-1]):
            raise ValueError(f"{path} line {number}: NER tag {fields[-1]!r} is not O, B-TYPE or I-TYPE: {line!r}")
        sentence.append(" ".join(fields))
    if sentence:
        documents[-1].append(sentence)
    return [document for document in documents if document]


def main(
    input_path: Path = typer.Argument(..., help="CoNLL NER file (token ... NER columns)"),
    output_path: Path = typer.Argument(..., help="Output .spacy file"),
    limit: Optional[int] = typer.Option(None, "--limit", "-l", help="Only the first N docs"),
    n_sents: int = typer.Option(10, "--n-sents", "-n", help="Sentences per doc (0: one doc per -DOCSTART- document)"),
):
    require_file(input_path, "CoNLL")
    require_limit(limit)
    if n_sents < 0:
        msg.fail(f"--n-sents must be at least 0, not {n_sents}", exits=1)
    try:
        documents = read_documents(input_path)
    except ValueError as err:
        msg.fail(str(err), exits=1)
    if not documents:
        msg.fail(f"{input_path} has no sentences", exits=1)
    groups = [document[i:i + n_sents] if n_sents else document
              for document in documents for i in range(0, len(document), n_sents or len(document))]
    groups = groups[:limit] if limit is not None else groups
    text = "".join(f"{SPACY_DELIMITER}\n\n" + "\n\n".join("\n".join(s) for s in group) + "\n\n" for group in groups)
    docs = list(conll_ner_to_docs(text, n_sents=0, no_print=True)) if groups else []
    write_docs(docs, output_path)
    counts = Counter(ent.label_ for doc in docs for ent in doc.ents)
    msg.good(f"Wrote {len(docs)} docs to {output_path} ({sum(len(g) for g in groups)} sentences from "
             f"{len(documents)} document(s); entities: "
             f"{', '.join(f'{n} {label}' for label, n in sorted(counts.items())) or 'none'})")


if __name__ == "__main__":
    typer.run(main)
