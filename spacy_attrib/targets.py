"""What is explained: a label of a doc-level head, or a tag of one token for per-token heads."""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch

LabelsSetting = Union[str, Sequence[str]]


@dataclass(frozen=True)
class Target:
    label: str
    label_index: int
    token: Optional[int] = None  # the token whose output is explained (per-token heads); None: the doc's

    @property
    def position(self) -> int:
        return 0 if self.token is None else self.token


def validate_labels(labels: LabelsSetting, available: Sequence[str], head: str) -> None:
    """Fail early, naming the problem, on a `labels` setting the head cannot answer."""
    if isinstance(labels, str):
        if labels not in ("predicted", "all"):
            raise ValueError(f"labels must be 'predicted', 'all' or a list of labels, got {labels!r}")
        return
    unknown = [label for label in labels if label not in available]
    if unknown:
        raise ValueError(f"Unknown label(s) {unknown} for component {head!r}; its labels are {list(available)}")


def choose_targets(logits: torch.Tensor, lengths: Sequence[int], labels: LabelsSetting,
                   available: Sequence[str], *, per_token: bool, exclusive: bool,
                   threshold: float = 0.5) -> List[List[Target]]:
    """The targets of each doc, from the head's logits at the input, shaped (docs, positions, labels).

    ``predicted``: the arg-max label (exclusive heads, and each token of a tagger) or every label whose
    probability reaches `threshold` (multilabel heads); ``all``: every label; a list: those labels.
    """
    targets: List[List[Target]] = []
    for d, length in enumerate(lengths):
        positions = [None] if not per_token else list(range(length))
        doc_targets = []
        for token in positions:
            row = logits[d, 0 if token is None else token]
            if labels == "predicted":
                if exclusive:
                    indices = [int(row.argmax())]
                else:
                    indices = [int(i) for i in torch.nonzero(torch.sigmoid(row) >= threshold).flatten()]
            elif labels == "all":
                indices = list(range(len(available)))
            else:
                indices = [available.index(label) for label in labels]
            doc_targets.extend(Target(available[i], i, token) for i in indices)
        targets.append(doc_targets if length else [])
    return targets


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
