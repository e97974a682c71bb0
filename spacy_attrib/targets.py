"""What is explained: a label of a head at one of its output positions, and where its result belongs.

Heads choose targets (`spacy_attrib.view.heads`); methods only read them: ``label_index`` and
``position`` index the view's scores, ``token`` / ``span`` say where the result is stored.
"""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

LabelsSetting = Union[str, Sequence[str]]


@dataclass(frozen=True)
class Target:
    """One explained output of the head.

    label: the explained label.
    label_index: its index along the label axis of `ViewOutput.scores`.
    position: the index along the position axis: 0 for doc-level heads (textcat), the token for the tagger,
        the entity's slot (ner) or the suggested span's index (spancat).
    token: the token the result belongs to (tagger), else None.
    span: (start, end) token offsets of the span the result belongs to (ner, spancat), else None.
    """

    label: str
    label_index: int
    position: int = 0
    token: Optional[int] = None
    span: Optional[Tuple[int, int]] = None


def validate_labels(labels: LabelsSetting, available: Sequence[str], head: str) -> None:
    """Fail early, naming the problem, on a `labels` setting the head cannot answer."""
    if isinstance(labels, str):
        if labels not in ("predicted", "all", "last"):
            raise ValueError(f"labels must be 'predicted', 'all', 'last' or a list of labels, got {labels!r}")
        return
    unknown = [label for label in labels if label not in available]
    if unknown:
        raise ValueError(f"Unknown label(s) {unknown} for component {head!r}; its labels are {list(available)}")


def resolve_labels(labels: LabelsSetting, available: Sequence[str]) -> LabelsSetting:
    """``last`` is the head's last label (Wu & Ong 2021 explain class len(labels) − 1, the most positive
    class of SST-5, whatever the prediction); the other settings are the heads' own."""
    return [available[-1]] if labels == "last" else labels


def slot_count(targets: Sequence[Sequence[Target]]) -> int:
    return max((len(t) for t in targets), default=0)


def slot_values(scores: torch.Tensor, doc_index: Sequence[int], targets: Sequence[Sequence[Target]],
                slot: int) -> torch.Tensor:
    """Each instance's value of its doc's `slot`-th target (0 where the doc has fewer targets), shape
    (n_instances,). Summing these seeds one backward pass for that slot across all instances."""
    rows, positions, labels, present = [], [], [], []
    for i, d in enumerate(doc_index):
        has = slot < len(targets[d])
        target = targets[d][slot] if has else None
        rows.append(i)
        positions.append(target.position if has else 0)
        labels.append(target.label_index if has else 0)
        present.append(has)
    device = scores.device
    values = scores[torch.tensor(rows, device=device), torch.tensor(positions, device=device),
                    torch.tensor(labels, device=device)]
    return values * torch.tensor(present, device=device, dtype=values.dtype)
