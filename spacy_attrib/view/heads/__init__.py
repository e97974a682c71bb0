"""Head kinds, chosen by the head component's class."""

from typing import Any, List, Optional, Tuple, Type

from spacy.pipeline import EntityRecognizer, Morphologizer, SentenceRecognizer, SpanCategorizer, Tagger
from spacy.pipeline import TextCategorizer

from .base import Head, HeadFunction
from .classifier import ClassifierHead
from .parser import ParserHead
from .spancat import SpancatHead
from .tagger import TaggerHead

# In order: the first class a pipe is an instance of decides. Morphologizer and SentenceRecognizer
# subclass Tagger but label tokens differently, so they are refused rather than read as taggers.
HEAD_KINDS: List[Tuple[Type, Optional[Type[Head]]]] = [
    (Morphologizer, None),
    (SentenceRecognizer, None),
    (TextCategorizer, ClassifierHead),  # textcat_multilabel's class subclasses it
    (Tagger, TaggerHead),
    (EntityRecognizer, ParserHead),
    (SpanCategorizer, SpancatHead),
]
SUPPORTED_HEADS: Tuple[str, ...] = tuple(f for _, kind in HEAD_KINDS if kind for f in kind.factories)


def head_kind(pipe: Any) -> Optional[Type[Head]]:
    """The head kind serving `pipe`, or None if it is not a supported kind."""
    for cls, kind in HEAD_KINDS:
        if isinstance(pipe, cls):
            return kind
    return None


__all__ = ["Head", "HeadFunction", "SUPPORTED_HEADS", "head_kind"]
