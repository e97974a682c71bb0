"""DiffMask's gates (`spacy_attrib.methods.masks.gates`): the Hard Concrete's closed-form expected L0 against
Monte Carlo, its support, and the weight-normed gate network against torch's own weight norm."""

import math

import pytest
import torch

from spacy_attrib.methods.masks.gates import HardConcrete, MLPMaxGate, WeightNormLinear


def test_monte_carlo_l0_equals_the_closed_form():
    """mean(z > 0) over 1e5 samples equals exp(log P(z ≠ 0)) to 1e-2, for closed, open and balanced gates."""
    logits = torch.tensor([-4.0, -1.0, -0.322, 0.0, 1.0, 5.0])
    gates = HardConcrete(logits.expand(100_000, -1))
    samples = gates.rsample(torch.Generator().manual_seed(0))
    expected = gates.log_expected_l0()[0].exp()
    torch.testing.assert_close((samples > 0).float().mean(0), expected, atol=1e-2, rtol=0)
    assert samples.min() == 0 and samples.max() <= 1
    assert ((samples > 0) & (samples < 1)).float().mean() > 0.1


def test_the_closed_form_at_the_official_stretch_is_log_sigmoid_of_logits_plus_0_322():
    logits = torch.linspace(-6, 6, 13)
    shift = -0.2 * math.log(1 / 5)  # −τ·logit(1/6)
    assert shift == pytest.approx(0.3219, abs=1e-4)
    torch.testing.assert_close(HardConcrete(logits).log_expected_l0(), torch.nn.functional.logsigmoid(logits + shift))


def test_samples_are_differentiable_in_the_logits():
    logits = torch.zeros(1000, requires_grad=True)
    HardConcrete(logits).rsample(torch.Generator().manual_seed(1)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_bad_stretch_is_refused():
    with pytest.raises(ValueError, match="stretch must satisfy"):
        HardConcrete(torch.zeros(1), stretch=(0.1, 1.0))


def test_weight_norm_linear_is_torchs_weight_norm():
    torch.manual_seed(0)
    ours = WeightNormLinear(6, 3)
    reference = torch.nn.Linear(6, 3)
    with torch.no_grad():
        reference.weight.copy_(ours.direction)
        reference.bias.copy_(ours.bias)
    reference = torch.nn.utils.parametrizations.weight_norm(reference)
    with torch.no_grad():
        ours.norm.mul_(2.0)
        reference.parametrizations.weight.original0.mul_(2.0)
    x = torch.randn(4, 6)
    torch.testing.assert_close(ours(x), reference(x))


def test_gates_start_open_and_stay_within_b_plus_minus_10():
    torch.manual_seed(0)
    gate = MLPMaxGate(8, 2)
    logits = gate(torch.randn(50, 8) * 100)
    assert ((logits >= -5) & (logits <= 15)).all()
    assert float(gate.bias.detach()) == 5.0
    assert float(HardConcrete(torch.tensor(5.0)).log_expected_l0().exp()) == pytest.approx(0.995, abs=1e-3)
