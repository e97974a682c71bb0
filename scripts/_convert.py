"""What the convert scripts share: input checks that end in one message and exit code 1, reading GLUE-style
TSV files, and writing the DocBin. The scripts run as ``python scripts/convert_NAME.py``, which puts this
directory on the import path."""

import csv
from pathlib import Path
from typing import Iterable, List, Optional

from spacy.tokens import Doc, DocBin
from wasabi import msg


def require_file(path: Path, what: str) -> None:
    if not path.is_file():
        msg.fail(f"{what} file not found: {path}", exits=1)


def require_limit(limit: Optional[int]) -> None:
    if limit is not None and limit < 0:
        msg.fail(f"--limit must be at least 0, not {limit}", exits=1)


def require_separator(separator: str) -> None:
    """A pair's separator is one token: the transformer tokenizer's own ([SEP] for BERT models)."""
    if not separator or len(separator.split()) != 1 or separator != separator.strip():
        msg.fail(f"--separator must be one token without whitespace, not {separator!r}", exits=1)


def read_tsv(path: Path) -> List[List[str]]:
    """Every row of a tab-separated file, quotes taken literally (GLUE's files are not quoted)."""
    with path.open(encoding="utf8", newline="") as file:
        return list(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE))


def write_docs(docs: Iterable[Doc], path: Path) -> None:
    """The docs as a DocBin at `path` (user data kept: human rationales, similarity scores)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=docs, store_user_data=True).to_disk(path)
