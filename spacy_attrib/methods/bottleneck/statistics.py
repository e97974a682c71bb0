"""The mean μ and standard deviation σ that the bottleneck normalises hidden states with.

- ``dataset`` (Schulz et al.'s estimate): per hidden unit, pooled over every real (non-padding) position
  of the training docs, streamed through running sums in float64, so memory does not grow with the data.
  σ follows the official `Estimator`: σ = sqrt(max(S, ε) / N) with S the sum of squared deviations,
  N the number of positions and ε = 1e-5.
- ``reference_code`` (the official per-example quirk, method notes §1.3): μ = the bottleneck layer's
  *input* for the same example and σ = sqrt(1e-5) everywhere, as a fresh estimator fed that one tensor
  gives. Then r = (h_out − h_in) / 3.2e-3: noise means skipping the layer.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict

import numpy
import torch

VARIANCE_FLOOR = 1e-5  # the official Estimator's eps on the sum of squared deviations
REFERENCE_STD = math.sqrt(VARIANCE_FLOOR)


@dataclass
class BottleneckStatistics:
    """Per-hidden-unit mean and standard deviation at encoder layer `layer`, fitted on `n_positions`."""

    layer: int
    mean: numpy.ndarray  # (hidden,) float32
    std: numpy.ndarray  # (hidden,) float32
    n_positions: int

    def tensors(self, device: torch.device):
        return torch.tensor(self.mean, device=device), torch.tensor(self.std, device=device)

    def to_dict(self) -> Dict[str, Any]:
        return {"layer": self.layer, "mean": self.mean, "std": self.std, "n_positions": self.n_positions}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "BottleneckStatistics":
        return cls(int(data["layer"]), numpy.asarray(data["mean"], dtype="float32"),
                   numpy.asarray(data["std"], dtype="float32"), int(data["n_positions"]))


class RunningMoments:
    """Σx and Σx² per hidden unit over the positions seen, in float64."""

    def __init__(self, hidden: int):
        self.n = 0
        self.total = numpy.zeros(hidden, dtype="float64")
        self.total_sq = numpy.zeros(hidden, dtype="float64")

    def add(self, values: torch.Tensor) -> None:
        """Add (positions, hidden) values."""
        values = values.detach().to(torch.float64).cpu().numpy()
        self.n += values.shape[0]
        self.total += values.sum(0)
        self.total_sq += (values ** 2).sum(0)

    def statistics(self, layer: int) -> BottleneckStatistics:
        if self.n == 0:
            raise ValueError("No positions to estimate the bottleneck statistics from: the examples were empty")
        mean = self.total / self.n
        squared_deviations = numpy.maximum(self.total_sq - self.n * mean ** 2, 0.0)
        std = numpy.sqrt(numpy.maximum(squared_deviations, VARIANCE_FLOOR) / self.n)
        return BottleneckStatistics(layer, mean.astype("float32"), std.astype("float32"), self.n)
