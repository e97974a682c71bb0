"""Convert AG News topic classification data into a DocBin with gold ``doc.cats``: four exclusive labels, one
per line of ``classes.txt`` with every run of characters other than letters and digits replaced by ``_``,
so that the labels are plain identifiers: ``World``, ``Sports``, ``Business``, ``Sci_Tech`` (for
``Sci/Tech``). Each doc's cats hold all four labels, 1.0 for its class, 0.0 for the others.

Source: AG's News Topic Classification Dataset (Zhang, Zhao & LeCun, 2015, "Character-level Convolutional
Networks for Text Classification"). Two formats, chosen by the input's suffix (see the data's README):

- ``.csv``, the official files (``test.csv``): no header; ``"class","title","description"``, class 1-4 =
  line 1-4 of ``classes.txt``; read with Python's ``csv`` module. The text is the description; ``--title``
  puts the title before it (``title + " " + description``). The default leaves titles out so that test
  texts look like the training sample's.
- ``.tsv``, the ALPS sample of the training set (Yuan et al., 2020, ``train_sample_alps.tsv``): no header;
  ``description<TAB>class name`` (``Sci/Tech``, not ``Sci_Tech``). 397 of its rows are quoted as in CSV
  (a leading ``"``, ``""`` for a quote), so it is read with the ``csv`` module too (tab delimiter).

Both formats have the same artefacts of the original crawl, which are cleaned alike: a backslash that
stands for a line break (``and\\the``, ``\\\\``) becomes a space, ``\\$`` becomes ``$``, runs of whitespace
become one space, and the text is stripped. HTML remnants such as `` #39;`` (for an apostrophe) and
``&lt;A HREF=...&gt;`` are kept as they are.

``classes.txt`` is read from the input's folder unless ``--classes`` names it.

    python scripts/convert_agnews.py ../shared/data/agnews/train_sample_alps.tsv corpus/agnews_train.spacy
    python scripts/convert_agnews.py ../shared/data/agnews/test.csv corpus/agnews_test500.spacy --limit 500 --seed 0

``--limit N`` keeps the first N rows, or with ``--seed`` a reproducible random sample of N rows
(``random.Random(seed).sample``, in sampled order); ``--seed`` alone has no effect.
"""

import csv
import random
import re
from collections import Counter
from pathlib import Path
from typing import List, Optional, Tuple

import spacy
import typer
from wasabi import msg

from _convert import require_file, require_limit, write_docs

FORMATS = (".csv", ".tsv")


def label_name(name: str) -> str:
    """``Sci/Tech`` -> ``Sci_Tech``: runs of characters other than ASCII letters and digits become ``_``."""
    return re.sub(r"[^0-9A-Za-z]+", "_", name.strip()).strip("_")


def clean(text: str) -> str:
    text = text.replace("\\$", "$")
    text = re.sub(r"\\+", " ", text)
    return " ".join(text.split())


def read_classes(path: Path) -> List[str]:
    names = [line.strip() for line in path.read_text(encoding="utf8").splitlines() if line.strip()]
    labels = [label_name(name) for name in names]
    if not labels or "" in labels or len(set(labels)) != len(labels):
        raise ValueError(f"{path} does not name distinct classes, one a line: {names}")
    return names


def read_rows(path: Path, names: List[str], title: bool) -> List[Tuple[str, str]]:
    """(text, label) of every row of `path`, with labels as :func:`label_name` spells them."""
    rows = []
    tsv = path.suffix == ".tsv"
    with path.open(encoding="utf8", newline="") as file:
        reader = csv.reader(file, delimiter="\t") if tsv else csv.reader(file)
        for row in reader:
            where = f"{path} line {reader.line_num}"
            if tsv:
                if len(row) != 2 or row[1] not in names:
                    raise ValueError(f"{where} is not a description and a class name ({', '.join(names)}) "
                                     f"separated by a tab: {row}")
                text, name = clean(row[0]), row[1]
            else:
                if len(row) != 3 or row[0] not in [str(i) for i in range(1, len(names) + 1)]:
                    raise ValueError(f"{where} is not \"class\",\"title\",\"description\" with class 1-"
                                     f"{len(names)}: {row}")
                text = clean(f"{row[1]} {row[2]}" if title else row[2])
                name = names[int(row[0]) - 1]
            if not text:
                raise ValueError(f"{where} has no text")
            rows.append((text, label_name(name)))
    return rows


def main(
    input_path: Path = typer.Argument(..., help="AG News .csv (official) or .tsv (ALPS train sample)"),
    output_path: Path = typer.Argument(..., help="Output .spacy file"),
    limit: Optional[int] = typer.Option(None, "--limit", "-l", help="Only N rows"),
    seed: Optional[int] = typer.Option(None, "--seed", help="With --limit: a random sample of N with this seed"),
    classes_path: Optional[Path] = typer.Option(None, "--classes", help="classes.txt (default: next to the input)"),
    title: bool = typer.Option(False, "--title", help="Put the title before the description (.csv only)"),
):
    require_file(input_path, "AG News")
    if input_path.suffix not in FORMATS:
        msg.fail(f"Unknown AG News format {input_path.suffix!r}: .csv (official) or .tsv (ALPS sample)", exits=1)
    if title and input_path.suffix == ".tsv":
        msg.fail("--title needs the .csv format: the .tsv sample has no titles", exits=1)
    require_limit(limit)
    classes_path = classes_path or input_path.parent / "classes.txt"
    if not classes_path.is_file():
        msg.fail(f"AG News classes file not found: {classes_path} (give it with --classes)", exits=1)
    try:
        names = read_classes(classes_path)
        rows = read_rows(input_path, names, title)
    except (ValueError, csv.Error) as err:
        msg.fail(str(err), exits=1)
    if limit is not None:
        rows = rows[:limit] if seed is None else random.Random(seed).sample(rows, min(limit, len(rows)))
    labels = [label_name(name) for name in names]
    nlp = spacy.blank("en")
    docs = []
    for text, gold in rows:
        doc = nlp.make_doc(text)
        doc.cats = {label: float(label == gold) for label in labels}
        docs.append(doc)
    write_docs(docs, output_path)
    counts = Counter(gold for _, gold in rows)
    msg.good(f"Wrote {len(docs)} docs to {output_path} "
             f"({', '.join(f'{counts[label]} {label}' for label in labels)})")


if __name__ == "__main__":
    typer.run(main)
