"""Named evaluation protocols: which tokens are removed, how many, how, and what is measured.

Every faithfulness measure removes a ranked prefix of a doc's tokens and re-scores (`removal`):

- comprehensiveness at k: ``p(x) − p(x \\ top_k)`` (remove the k most relevant tokens; higher = the
  explanation found what the prediction needs);
- sufficiency at k: ``p(x) − p(top_k)`` (keep only them; lower = they suffice);
- AOPC: the mean over the protocol's points (÷ their number, as ERASER's scorer does);
- degradation: ``p(x \\ top_k)`` (MoRF) and ``p(x \\ bottom_k)`` (LeRF) curves over the points, with
  accuracy, and the area between them (trapezoid over [0] + points; higher = better ranking);
- ``f1_auc``: Atanasova et al.'s faithfulness, the area under (share or number masked, the dataset's
  macro-F1) (lower = more faithful).

`p` is the probability of the explained label (for an entity, of its transitions), read through the
pipeline. Tokens are spaCy tokens with wordpieces, the target's own token or span excepted. A protocol's
points are either `fractions` of those n tokens (k = `count`(fraction × n); curves and areas run over the
fraction, 0 … 1) or `counts` of tokens (k = min(count, n), as Wu & Ong delete the top 1 … 10; curves and
areas run over k, 0 … K). Filters choose the cases: `min_tokens` removable tokens at least, and with
`correct_only` only targets whose clean decision matches gold.

References: DeYoung et al. 2020 (ERASER), Samek et al. 2017 (AOPC, MoRF/LeRF), Attanasio et al. 2023
(ferret), Atanasova et al. 2020 (diagnostic properties), the IBA paper's degradation test
(method-notes §1.5), Wu & Ong 2021's word deletion (method-notes §2.3).
"""

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Literal, Tuple, Union

from ..removal import REMOVALS

MEASURES = ("comprehensiveness", "sufficiency", "degradation", "f1_auc")
COUNTS = {"ceil": math.ceil, "floor": math.floor, "round": lambda x: math.floor(x + 0.5)}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class Protocol:
    """A faithfulness protocol.

    name: its name in results. removal: ``delete``, ``mask``, ``unk`` or ``pad`` (see `removal`).
    fractions: the shares of removable tokens ranked first (the bins); empty where `counts` are given.
    count: how a fraction of n tokens becomes a count: ``ceil``, ``floor`` or ``round`` (half up); read for
        `fractions` only.
    measures: any of ``comprehensiveness``, ``sufficiency``, ``degradation``, ``f1_auc``.
    positive_only: rank only tokens with a positive score (ferret): fewer than k positive tokens give fewer.
    skip_repeats: leave out bins that select nothing or the same tokens as the bin before (ferret); for
        comprehensiveness and sufficiency only (the curves and the F1 AUC need every bin).
    target: ``explained`` (every explained target) or ``gold`` (only results for the gold label, as the
        IBA paper evaluates; the method must have explained it, e.g. ``labels = "all"``).
    counts: numbers of removable tokens ranked first, instead of `fractions` (give exactly one of the two);
        a doc with n < k removable tokens loses all n.
    min_tokens: measure only cases with at least this many removable tokens (0: every case).
    correct_only: measure only targets whose clean decision matches their gold label; docs without gold
        (given already explained) and targets without a decision (entities, spans) are an error.
    """

    name: str
    removal: str
    fractions: Tuple[float, ...]
    count: Literal["ceil", "floor", "round"]
    measures: Tuple[str, ...]
    positive_only: bool = False
    skip_repeats: bool = False
    target: Literal["explained", "gold"] = "explained"
    counts: Tuple[int, ...] = ()
    min_tokens: int = 0
    correct_only: bool = False

    def __post_init__(self):
        if self.removal not in REMOVALS:
            raise ValueError(f"removal must be one of {REMOVALS}, got {self.removal!r}")
        if self.count not in COUNTS:
            raise ValueError(f"count must be one of {tuple(COUNTS)}, got {self.count!r}")
        unknown = [m for m in self.measures if m not in MEASURES]
        if unknown or not self.measures:
            raise ValueError(f"measures must be a non-empty selection of {MEASURES}, got {self.measures!r}")
        if bool(self.fractions) == bool(self.counts):
            raise ValueError(f"give either fractions or counts (not both, not neither), got fractions "
                             f"{self.fractions!r} and counts {self.counts!r}")
        if any(not 0 <= f <= 1 for f in self.fractions) or list(self.fractions) != sorted(self.fractions):
            raise ValueError(f"fractions must be increasing values in [0, 1], got {self.fractions!r}")
        if (any(not _is_count(k) for k in self.counts) or list(self.counts) != sorted(self.counts)
                or len(set(self.counts)) != len(self.counts)):
            raise ValueError(f"counts must be increasing whole numbers ≥ 0, got {self.counts!r}")
        if not _is_count(self.min_tokens):
            raise ValueError(f"min_tokens must be a whole number ≥ 0, got {self.min_tokens!r}")
        if not isinstance(self.correct_only, bool):
            raise ValueError(f"correct_only must be True or False, got {self.correct_only!r}")
        if self.skip_repeats and set(self.measures) - {"comprehensiveness", "sufficiency"}:
            # A left-out bin has no score: the curves and the F1 AUC need every bin.
            raise ValueError(f"skip_repeats applies to comprehensiveness and sufficiency only, got {self.measures!r}")
        if self.target not in ("explained", "gold"):
            raise ValueError(f"target must be 'explained' or 'gold', got {self.target!r}")

    @property
    def points(self) -> Tuple[Union[float, int], ...]:
        """The x values of the protocol's bins: its fractions, or its counts."""
        return self.counts or self.fractions

    @property
    def axis(self) -> str:
        """The name of the x values in curves: ``fraction`` or ``k``."""
        return "k" if self.counts else "fraction"

    @property
    def axis_label(self) -> str:
        return "tokens removed" if self.counts else "fraction of tokens removed"

    def k(self, point: Union[float, int], n: int) -> int:
        """How many of `n` tokens the bin at `point` (a fraction, or a count) selects."""
        if self.counts:
            return min(n, int(point))
        # Rounded first, so that 0.1 × 30 = 3.0000000000000004 counts 3 under ceil.
        return min(n, max(0, int(COUNTS[self.count](round(point * n, 9)))))

    def with_changes(self, **changes: Any) -> "Protocol":
        return Protocol(**{**asdict(self), **changes})

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


TENTHS = tuple(round(0.1 * i, 1) for i in range(1, 11))
PRESETS: Dict[str, Protocol] = {
    # ERASER's released scorer: AOPC over the bins 1, 5, 10, 20, 50 %, tokens deleted.
    "eraser": Protocol("eraser", "delete", (0.01, 0.05, 0.1, 0.2, 0.5), "ceil", ("comprehensiveness", "sufficiency")),
    # ferret's AOPC: 10 … 100 %, only positively scored tokens, repeated and empty selections left out.
    "ferret": Protocol("ferret", "delete", TENTHS, "floor", ("comprehensiveness", "sufficiency"),
                       positive_only=True, skip_repeats=True),
    # Atanasova et al. 2020: [MASK] the top 0, 10, … 100 %; the AUC of the dataset's macro-F1.
    "atanasova": Protocol("atanasova", "mask", (0.0,) + TENTHS, "round", ("f1_auc", "comprehensiveness", "sufficiency")),
    # The IBA paper's degradation test (seed 000): 9 points at k/9, deleted, MoRF and LeRF, gold class.
    "iba": Protocol("iba", "delete", tuple(k / 9 for k in range(1, 10)), "round", ("degradation",), target="gold"),
    # A general degradation curve in tenths.
    "degradation": Protocol("degradation", "delete", TENTHS, "round", ("degradation",)),
    # Wu & Ong 2021's word deletion (seed 001, Exp 3.2.2): docs the model gets right with ≥ 10 units; the
    # top 1 … 10 set to the [PAD] id with the attention mask kept at 1; accuracy (and the explained label's
    # probability, MoRF and LeRF) at each k, against attr_random. Deviation: their unit is the wordpiece,
    # ranked over the whole sequence with [CLS]/[SEP] included; ours is the spaCy token (all its wordpieces
    # removed together, min_tokens counts spaCy tokens), and [CLS]/[SEP] are never ranked.
    "wu_ong": Protocol("wu_ong", "pad", (), "round", ("degradation",), counts=tuple(range(1, 11)), min_tokens=10,
                       correct_only=True),
}


def get_protocol(protocol: Any) -> Protocol:
    """A `Protocol`, or the preset of that name (clear error for an unknown one)."""
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PRESETS:
        raise ValueError(f"Unknown protocol {protocol!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[protocol]
