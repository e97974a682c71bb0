"""Evaluation results: one JSON per run, a table, and matplotlib plots (degradation curves with their
interval bands; AOPC bars with their intervals)."""

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import srsly
from spacy.language import Language

from .faithfulness import MetricResult
from .protocols import Protocol

#: whether a higher value is better, per metric (None: no direction, e.g. time is reported, not ranked)
HIGHER_IS_BETTER = {
    "comprehensiveness": True, "sufficiency": False, "degradation_morf": False, "degradation_lerf": True,
    "degradation_area_between": True, "f1_auc": False, "token_f1": True, "iou": True, "auprc": True,
    "ci_mae": False, "ci_max_error": False, "dataset_consistency": True, "rationale_consistency": True,
    "seconds_per_doc": False,
}
CONVENTIONS = {
    "probability": "p is the probability of the explained label (softmax/sigmoid; for an entity, of its transitions)",
    "aopc": "AOPC = the mean over the protocol's fractions (or counts) of p(x) − p(x with the selection "
            "removed/kept); divided by their number, as ERASER's scorer does",
    "area": "degradation areas and F1 AUC use the trapezoid over the fraction of removable tokens (0 … 1), or, "
            "for protocols with counts, over the number of tokens removed (0 … K)",
    "interval": "95 % percentile bootstrap over instances (1000 resamples unless stated), seed 0",
}


@dataclass
class Report:
    """What `evaluate` measured."""

    results: List[MetricResult]
    protocols: Sequence[Protocol]
    nlp: Language
    n_docs: int

    def rows(self) -> List[Dict[str, Any]]:
        return [r.to_dict() for r in self.results]

    def to_dict(self) -> Dict[str, Any]:
        from .. import __version__

        meta = self.nlp.meta
        return {
            "spacy_attrib_version": __version__,
            "pipeline": {"name": f"{meta.get('lang', self.nlp.lang)}_{meta.get('name', 'pipeline')}",
                         "version": meta.get("version"), "components": list(self.nlp.pipe_names)},
            "python": platform.python_version(),
            "n_docs": self.n_docs,
            "protocols": [p.to_dict() for p in self.protocols],
            "conventions": CONVENTIONS,
            "results": self.rows(),
        }

    def to_json(self, path: Path) -> None:
        srsly.write_json(path, self.to_dict())

    def table(self) -> List[List[str]]:
        """Rows of (protocol, metric, method, value, 95 % interval, n), for printing."""
        def number(x: Optional[float]) -> str:
            return "undefined" if x is None else f"{x:.4f}"

        return [[r.protocol, r.metric, r.method, number(r.estimate.value),
                 "" if r.estimate.low is None else f"[{r.estimate.low:.4f}, {r.estimate.high:.4f}]", str(r.estimate.n)]
                for r in self.results]

    def plot(self, directory: Path) -> List[Path]:
        """PNG files in `directory`: per protocol with degradation, its curves (one line per method, with its
        interval band; MoRF solid, LeRF dashed); per protocol with AOPC, bars with intervals."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        directory.mkdir(parents=True, exist_ok=True)
        written = []
        # one colour per method across every plot of the run
        colours = {method: f"C{i}" for i, method in enumerate(sorted({r.method for r in self.results}))}
        for protocol in self.protocols:
            curves = [r for r in self.results if r.protocol == protocol.name and r.metric in ("degradation_morf", "degradation_lerf")]
            if curves:
                # The explained label's probability (with its interval band) and the accuracy, side by side.
                fig, (ax, ax_accuracy) = plt.subplots(1, 2, figsize=(13, 4))
                for r in curves:
                    colour = colours[r.method]
                    style = "-" if r.metric.endswith("morf") else "--"
                    x, mean = r.curve[protocol.axis], r.curve["mean"]
                    label = f"{r.method} ({r.metric.rsplit('_', 1)[1].upper()})"
                    ax.plot(x, mean, style, color=colour, label=label)
                    if all(v is not None for v in r.curve["ci_low"]):
                        ax.fill_between(x, r.curve["ci_low"], r.curve["ci_high"], color=colour, alpha=0.15)
                    if "accuracy" in r.curve:
                        ax_accuracy.plot(x, r.curve["accuracy"], style, color=colour, label=label)
                ax.set(xlabel=protocol.axis_label, ylabel="probability of the explained label",
                       title=f"Degradation ({protocol.name}, {protocol.removal})")
                ax_accuracy.set(xlabel=protocol.axis_label, ylabel="accuracy", title="Accuracy")
                # outside the axes: with ten methods a legend inside hides the curves
                ax_accuracy.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="center left",
                                   bbox_to_anchor=(1.02, 0.5))
                written.append(_save(fig, directory / f"{protocol.name}_degradation.png"))
            bars = [r for r in self.results if r.protocol == protocol.name and r.metric in ("comprehensiveness", "sufficiency")]
            if bars:
                metrics = sorted({r.metric for r in bars})
                methods = sorted({r.method for r in bars})
                fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5), squeeze=False)
                for ax, metric in zip(axes[0], metrics):
                    rows = {r.method: r.estimate for r in bars if r.metric == metric}
                    values = [rows[m].value if m in rows else 0 for m in methods]
                    errors = [[(rows[m].value - rows[m].low) if m in rows and rows[m].low is not None else 0 for m in methods],
                              [(rows[m].high - rows[m].value) if m in rows and rows[m].high is not None else 0 for m in methods]]
                    ax.bar(range(len(methods)), values, yerr=errors, capsize=3, color=[colours[m] for m in methods])
                    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=7)
                    better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
                    ax.set_title(f"AOPC {metric} ({better} is better)", fontsize=9)
                fig.suptitle(f"{protocol.name} ({protocol.removal})", fontsize=10)
                written.append(_save(fig, directory / f"{protocol.name}_aopc.png"))
        return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
