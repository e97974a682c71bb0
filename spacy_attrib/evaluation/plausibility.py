"""Plausibility: agreement of an explanation with human rationales (ERASER, DeYoung et al. 2020).

Human rationales are spaCy spans in ``doc.spans["rationale"]``. Per doc, over its spaCy tokens:

- ``token_f1`` and ``iou``: the top-k tokens by score, k = the number of rationale tokens, against the
  rationale tokens (with equal sizes, precision = recall = F1);
- ``auprc``: the average precision of the score ranking against the rationale tokens (the step-wise area
  under the precision-recall curve; Atanasova et al.'s human agreement is the same number).

Docs without a rationale are left out (the n of each result says how many counted).
"""

from typing import Dict, Optional

import numpy
from spacy.tokens import Doc

from .statistics import average_precision

RATIONALE_KEY = "rationale"
METRICS = ("token_f1", "iou", "auprc")


def rationale_mask(doc: Doc, key: str = RATIONALE_KEY) -> Optional[numpy.ndarray]:
    """The doc's rationale tokens as a boolean mask; None where it has none."""
    if key not in doc.spans or not len(doc.spans[key]):
        return None
    mask = numpy.zeros(len(doc), dtype=bool)
    for span in doc.spans[key]:
        mask[span.start:span.end] = True
    return mask


def plausibility(scores: numpy.ndarray, rationale: numpy.ndarray) -> Dict[str, float]:
    """Token F1, IOU (top-k, k = rationale size) and AUPRC of token `scores` against the `rationale` mask."""
    scores = numpy.asarray(scores, dtype="float64")
    k = int(rationale.sum())
    predicted = numpy.zeros(len(scores), dtype=bool)
    predicted[numpy.argsort(-scores, kind="stable")[:k]] = True
    overlap = int((predicted & rationale).sum())
    union = int((predicted | rationale).sum())
    f1 = 2 * overlap / (predicted.sum() + k) if k else float("nan")
    return {"token_f1": float(f1), "iou": overlap / union if union else float("nan"),
            "auprc": average_precision(rationale, scores)}
