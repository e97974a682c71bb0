"""The per-sample information bottleneck of Schulz et al. (ICLR 2020), as Jiang et al. (2020) insert it
after an encoder layer of BERT (official code: bazingagin/IBA, `scripts/information_bottleneck/IBA.py`).

With hidden states R at the bottleneck, their estimated mean μ and standard deviation σ, and a mask
λ = sigmoid(α) per row, position and hidden unit:

    r = (R − μ) / σ                                   normalised hidden states
    z = λ r + (1 − λ) ε,   ε ~ N(0, 1)                 so q(z | r) = N(λ r, (1 − λ)²), prior N(0, 1)
    Z = z σ + μ                                       what the rest of the network receives
    C = KL(q(z | r) ‖ N(0, 1)) = −½ (1 + log v − m² − v),   m = λ r,  v = (1 − λ)²

The noise's log-variance is clamped to [−10, 10] for sampling only (as the official code does), so the
noise never falls below e⁻⁵ standard deviations however close λ comes to 1; the capacity is not clamped.
Everything here runs in float32: with the reference code's σ ≈ 3e-3, r² overflows half precision.
"""

from typing import Optional

import torch

LOG_VARIANCE_CLAMP = 10.0


def noise_log_variance(alpha: torch.Tensor) -> torch.Tensor:
    """log (1 − λ)² = 2 log sigmoid(−α), computed stably (1 − λ rounds to 0 in float32 from α ≈ 17)."""
    return 2 * torch.nn.functional.logsigmoid(-alpha)


def capacity(r: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Per-unit capacity C = KL(N(λ r, (1 − λ)²) ‖ N(0, 1)) in nats, λ = sigmoid(α); same shape as `r`."""
    mean = torch.sigmoid(alpha) * r
    log_variance = noise_log_variance(alpha)
    return -0.5 * (1 + log_variance - mean ** 2 - log_variance.exp())


def bottleneck(r: torch.Tensor, alpha: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
               noise: Optional[torch.Tensor]) -> torch.Tensor:
    """Z = (λ r + √v ε) σ + μ, the sampling noise's log-variance clamped to ±10; `noise` ε ~ N(0, 1) of the
    shape of `r`, or None for the noiseless mean λ r σ + μ."""
    z = torch.sigmoid(alpha) * r
    if noise is not None:
        log_variance = noise_log_variance(alpha).clamp(-LOG_VARIANCE_CLAMP, LOG_VARIANCE_CLAMP)
        z = z + (0.5 * log_variance).exp() * noise
    return z * std + mean
