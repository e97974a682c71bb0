"""Evaluating explanations over a corpus: faithfulness under named protocols (degradation, AOPC
comprehensiveness and sufficiency, Atanasova et al.'s F1 AUC), plausibility against human rationales, and
the diagnostic properties of Atanasova et al. (2020), each with a 95 % bootstrap interval.

    from spacy_attrib.evaluation import evaluate
    report = evaluate(nlp, docs, protocols=["eraser", "ferret"])
    report.to_json("results.json"); report.plot(Path("plots"))
"""

from .faithfulness import Case, MetricResult
from .plausibility import plausibility, rationale_mask
from .protocols import PRESETS, Protocol, get_protocol
from ..removal import REMOVALS, Removal, Rescorer
from .report import Report
from .runner import attribution_components, evaluate, explain_corpus
from .statistics import Estimate, bootstrap

__all__ = ["Case", "Estimate", "MetricResult", "PRESETS", "Protocol", "REMOVALS", "Removal", "Report", "Rescorer",
           "attribution_components", "bootstrap", "evaluate", "explain_corpus", "get_protocol", "plausibility",
           "rationale_mask"]
