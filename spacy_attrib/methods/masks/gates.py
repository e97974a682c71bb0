"""The gates of DiffMask (De Cao, Schlichtkrull, Aziz & Titov, EMNLP 2020, "How do Decisions Emerge across
Layers in Neural Models? Interpretation with Differentiable Masking"), as its official code has them
(`diffmask/models/distributions.py`, `gates.py`).

- `HardConcrete`: the stretched and rectified binary Concrete of Louizos, Welling & Kingma (ICLR 2018). A
  sample is ``z = clamp(l + (r − l)·σ((log u − log(1 − u) + a)/τ), 0, 1)`` with ``u ~ U(0, 1)``, logits
  ``a``, temperature τ = 0.2 and stretch ``(l, r) = (−0.2, 1.0)``; it is exactly 0 with positive
  probability, and its expected L0 has a closed form:
  ``log P(z ≠ 0) = −softplus(τ·logit(−l/(r − l)) − a) = log σ(a + 0.322)`` at the defaults.
- `MLPMaxGate`: the gate logits' network, weight-normed ``Linear → tanh → Linear → tanh``, then ``× 10 + b``
  with a learned scalar ``b`` initialised to 5 (every gate starts open: P(z ≠ 0) ≈ 0.995).
"""

import math
from typing import Optional

import torch

TEMPERATURE = 0.2
STRETCH = (-0.2, 1.0)


class HardConcrete:
    """The Hard Concrete distribution of gates with `logits` (any shape)."""

    def __init__(self, logits: torch.Tensor, temperature: float = TEMPERATURE, stretch=STRETCH):
        low, high = stretch
        if not low < 0 < 1 <= high or temperature <= 0:
            raise ValueError(f"stretch must satisfy l < 0 < 1 <= r and temperature > 0, got {stretch}, {temperature}")
        self.logits = logits
        self.temperature = temperature
        self.low, self.high = low, high

    def rsample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A reparameterised sample (differentiable in the logits where it is not clamped)."""
        u = torch.rand(self.logits.shape, generator=generator, device=self.logits.device).clamp(1e-6, 1 - 1e-6)
        concrete = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.logits) / self.temperature)
        return (self.low + (self.high - self.low) * concrete).clamp(0.0, 1.0)

    def log_expected_l0(self) -> torch.Tensor:
        """log P(z ≠ 0), elementwise, in closed form: the sample is positive where the concrete variable
        exceeds −l/(r − l)."""
        threshold = -self.low / (self.high - self.low)
        shift = self.temperature * math.log(threshold / (1 - threshold))
        return -torch.nn.functional.softplus(shift - self.logits)


class WeightNormLinear(torch.nn.Module):
    """``y = g · (x · v/‖v‖ᵀ) + c``, the weight normalisation of Salimans & Kingma (2016) that the official
    gates use (``torch.nn.utils.weight_norm``, one norm per output unit). Written out so that the probe
    pickles (torch's parametrised modules do not)."""

    def __init__(self, n_in: int, n_out: int, bias: bool = True):
        super().__init__()
        linear = torch.nn.Linear(n_in, n_out, bias=bias)
        self.direction = torch.nn.Parameter(linear.weight.detach().clone())
        self.norm = torch.nn.Parameter(linear.weight.detach().norm(dim=1, keepdim=True))
        self.bias = torch.nn.Parameter(linear.bias.detach().clone()) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.norm * self.direction / self.direction.norm(dim=1, keepdim=True)
        return torch.nn.functional.linear(x, weight, self.bias)


class MLPMaxGate(torch.nn.Module):
    """Gate logits in (b − 10, b + 10): ``10 · tanh(W₂ tanh(W₁ x)) + b``, b learned from 5.0."""

    def __init__(self, n_in: int, n_hidden: int, max_activation: float = 10.0, bias_init: float = 5.0):
        super().__init__()
        # The official default (`--gate_bias` off) has no bias in the last Linear: `b` is the gate's bias.
        self.hidden = WeightNormLinear(n_in, n_hidden)
        self.out = WeightNormLinear(n_hidden, 1, bias=False)
        self.max_activation = max_activation
        # Shape (1,), not a scalar: thinc's optimizers take arrays with a length.
        self.bias = torch.nn.Parameter(torch.full((1,), float(bias_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``x.shape[:-1]``."""
        return torch.tanh(self.out(torch.tanh(self.hidden(x)))).squeeze(-1) * self.max_activation + self.bias
