"""Readers that turn two sentiment data sets into spaCy Docs with gold labels, for evaluating attributions.

- SST-2, the Stanford Sentiment Treebank's binary sentences as released in GLUE (Socher et al., 2013,
  "Recursive Deep Models for Semantic Compositionality Over a Sentiment Treebank"; Wang et al., 2018):
  :func:`read_sst2` reads one ``label<TAB>sentence`` file (1 = positive) into Docs with gold ``doc.cats``.
- ERASER Movie Reviews (DeYoung et al., 2020, "ERASER: A Benchmark to Evaluate Rationalized NLP Models"),
  the Pang & Lee reviews with the human rationales of Zaidan et al. (2007, "Using 'Annotator Rationales'
  to Improve Machine Learning for Text Categorization"): :func:`read_eraser_movies` also puts the
  rationales in ``doc.spans["rationale"]``, on tokens that are ERASER's own.

Both are registered as spaCy corpus readers (``spacy_attrib.SST2.v1``, ``spacy_attrib.EraserMovies.v1``),
so a config can use them for ``[corpora]``. The Docs keep their gold annotation in a DocBin
(``DocBin(docs=docs, store_user_data=True)``).
"""

import json
import random
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import spacy
from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.training import Example

ERASER_SPLITS = ("train", "val", "test")
RATIONALE = "rationale"
PathLike = Union[str, Path]


def read_sst2(path: PathLike, nlp: Language, *, limit: Optional[int] = None,
              labels: Tuple[str, str] = ("NEG", "POS")) -> List[Doc]:
    """Docs of the SST-2 file `path` (e.g. ``sst2/dev.tsv``), tokenized by ``nlp.make_doc``, with gold
    ``doc.cats``: ``labels[1]`` for label 1 (positive), ``labels[0]`` for label 0. A header row is skipped
    (its ``label`` column says which column holds the label); without one, rows are ``label<TAB>sentence``.
    `limit`: only the first `limit` rows. SST-2's sentences come tokenized, and spaCy's tokenizer splits
    some of their tokens further (``well-acted``, ``'ve``)."""
    path = Path(path)
    if path.is_dir():
        files = ", ".join(sorted(p.name for p in path.glob("*.tsv"))) or "none"
        raise ValueError(f"SST-2: {path} is a directory; pass one of its .tsv files ({files})")
    if not path.is_file():
        raise FileNotFoundError(f"SST-2 file not found: {path}")
    _check_limit(limit)
    if len(labels) != 2:
        raise ValueError(f"SST-2 labels are two names, (negative, positive), not {labels}")
    negative, positive = labels
    rows = [line.split("\t") for line in path.read_text(encoding="utf8").splitlines() if line.strip()]
    label_column, start = 0, 0
    if rows and rows[0][0] not in ("0", "1"):
        if "label" not in rows[0]:
            raise ValueError(f"SST-2: the header of {path} has no 'label' column: {rows[0]}")
        label_column, start = rows[0].index("label"), 1
    docs = []
    for number, row in enumerate(rows[start:], start + 1):
        if limit is not None and len(docs) == limit:
            break
        if len(row) != 2 or row[label_column] not in ("0", "1"):
            raise ValueError(f"SST-2: {path} row {number} is not a label (0 or 1) and a sentence "
                             f"separated by one tab: {row}")
        doc = nlp.make_doc(row[1 - label_column])
        positive_label = row[label_column] == "1"
        doc.cats = {positive: float(positive_label), negative: float(not positive_label)}
        docs.append(doc)
    return docs


def read_eraser_movies(directory: PathLike, split: str, nlp: Language, *, limit: Optional[int] = None,
                       seed: Optional[int] = None) -> List[Doc]:
    """One Doc per annotation of ERASER Movie Reviews' `split` (``train``, ``val`` or ``test``) in
    `directory` (which holds ``{split}.jsonl`` and ``docs/``).

    The tokens are ERASER's: the words of ``text.split()``, which its evidence offsets index, each
    followed by one space (the review's newlines and other whitespace are not kept, so ``doc.text`` is the
    words joined by spaces; each line of the review starts a sentence). ``doc.cats`` is the gold label
    (``POS``/``NEG``), ``doc.spans["rationale"]`` the evidence spans (label ``rationale``, duplicates merged,
    in document order, possibly overlapping; the test split's empty evidences, ``start_token == end_token``
    and text ``""``, are left out) and ``doc.user_data["annotation_id"]`` the review's id. An
    evidence span whose text is not its evidence ``text`` raises a ValueError.

    `limit`: only `limit` annotations, the first ones in file order, or with a `seed`, a reproducible
    random sample (``random.Random(seed).sample``, in sampled order)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"ERASER Movie Reviews directory not found: {directory}")
    available = [name for name in ERASER_SPLITS if (directory / f"{name}.jsonl").is_file()]
    if split not in available:
        raise ValueError(f"Unknown ERASER Movie Reviews split {split!r} in {directory}; "
                         f"available: {', '.join(available) or 'none'}")
    _check_limit(limit)
    with (directory / f"{split}.jsonl").open(encoding="utf8") as file:
        annotations = [json.loads(line) for line in file if line.strip()]
    if limit is not None:
        annotations = (annotations[:limit] if seed is None
                       else random.Random(seed).sample(annotations, min(limit, len(annotations))))
    return [_eraser_doc(nlp, directory / "docs", annotation) for annotation in annotations]


def _eraser_doc(nlp: Language, docs_dir: Path, annotation: Dict) -> Doc:
    doc_id = annotation["annotation_id"]
    lines = [line.split() for line in (docs_dir / doc_id).read_text(encoding="utf8").splitlines()]
    words = [word for line in lines for word in line]
    sent_starts = [i == 0 for line in lines for i in range(len(line))]
    spaces = [i < len(words) - 1 for i in range(len(words))]
    doc = Doc(nlp.vocab, words=words, spaces=spaces, sent_starts=sent_starts)
    label = annotation["classification"]
    if label not in ("POS", "NEG"):
        raise ValueError(f"ERASER {doc_id}: classification {label!r} is neither POS nor NEG")
    doc.cats = {"POS": float(label == "POS"), "NEG": float(label == "NEG")}
    spans: Dict[Tuple[int, int], Span] = {}
    for evidence in (evidence for group in annotation["evidences"] for evidence in group):
        start, end = evidence["start_token"], evidence["end_token"]
        if evidence["docid"] != doc_id or not 0 <= start <= end <= len(doc):
            raise ValueError(f"ERASER {doc_id}: evidence {evidence} does not lie in this review's "
                             f"{len(doc)} tokens")
        span = Span(doc, start, end, label=RATIONALE)
        if span.text != evidence["text"]:
            raise ValueError(f"ERASER {doc_id}: tokens {start}:{end} read {span.text!r}, but the "
                             f"evidence text is {evidence['text']!r}")
        if start < end:
            spans[start, end] = span
    doc.spans[RATIONALE] = [spans[key] for key in sorted(spans)]
    doc.user_data["annotation_id"] = doc_id
    return doc


def _check_limit(limit: Optional[int]) -> None:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or at least 0, not {limit}")


def _examples(nlp: Language, docs: Iterable[Doc]) -> Iterator[Example]:
    """Examples whose predicted doc has the reference's tokens and nothing else."""
    for doc in docs:
        predicted = Doc(nlp.vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc])
        yield Example(predicted, doc)


@spacy.registry.readers("spacy_attrib.SST2.v1")
def create_sst2_reader(path: Path, limit: Optional[int] = None,
                       labels: Sequence[str] = ("NEG", "POS")) -> Callable[[Language], Iterator[Example]]:
    """A corpus of :func:`read_sst2`'s docs as Examples (gold cats on the reference)."""
    return lambda nlp: _examples(nlp, read_sst2(path, nlp, limit=limit, labels=tuple(labels)))


@spacy.registry.readers("spacy_attrib.EraserMovies.v1")
def create_eraser_movies_reader(path: Path, split: str, limit: Optional[int] = None,
                                seed: Optional[int] = None) -> Callable[[Language], Iterator[Example]]:
    """A corpus of :func:`read_eraser_movies`'s docs as Examples (gold cats and rationale spans on the
    reference; the predicted doc has the same ERASER tokens)."""
    return lambda nlp: _examples(nlp, read_eraser_movies(path, split, nlp, limit=limit, seed=seed))
