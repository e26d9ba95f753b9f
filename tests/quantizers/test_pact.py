"""PACT: hand-computed grid, input STE mask, alpha gradient = sum of upstream over x >= alpha,
data-driven init and calibration."""
import pytest
import torch

from quant_det.quantizers import build_quantizer, set_calibration
from quant_det.quantizers.lsq import mse_step


def pact(bits, alpha):
    q = build_quantizer("pact", "act", bits).eval()
    q.alpha.data.fill_(alpha)
    q.initialized.fill_(1)
    return q


def test_two_bits_matches_hand_values():
    x = torch.tensor([-1.0, 0.1, 0.45, 0.9, 1.0, 2.0])
    # alpha = 1, n = 3: round(3 * clamp(x, 0, 1)) / 3 = [0, 0, 1, 3, 3, 3] / 3
    y = pact(2, 1.0)(x)
    assert torch.allclose(y, torch.tensor([0.0, 0.0, 1.0, 3.0, 3.0, 3.0]) / 3)


def test_alpha_gradient_counts_inputs_at_or_above_alpha():
    x = torch.tensor([-1.0, 0.1, 0.45, 0.9, 1.0, 2.0], requires_grad=True)
    q = pact(2, 1.0)
    q(x).backward(torch.ones(6))
    assert q.alpha.grad.item() == pytest.approx(2.0, rel=1e-6)  # x = 1.0 and x = 2.0
    assert torch.equal(x.grad, torch.tensor([0.0, 1, 1, 1, 0, 0]))


def test_alpha_gradient_with_random_upstream_on_a_large_tensor():
    torch.manual_seed(0)
    x = (torch.randn(8, 16, 20, 20) * 2).requires_grad_()
    g = torch.randn_like(x)
    q = pact(4, 1.5)
    y = q(x)
    y.backward(g)
    assert torch.allclose(q.alpha.grad, g[x.detach() >= 1.5].sum(), rtol=1e-4, atol=1e-3)
    inside = (x.detach() > 0) & (x.detach() < 1.5)
    assert torch.equal(x.grad, g * inside)
    assert y.unique().numel() <= 16


def test_alpha_starts_at_ten_and_first_training_batch_sets_it():
    q = build_quantizer("pact", "act", 4)
    assert q.alpha.item() == 10.0 and int(q.initialized) == 0
    x = torch.rand(2, 4, 8, 8) * 3
    q.eval()(x)
    assert q.alpha.item() == 10.0
    q.train()(x)
    assert int(q.initialized) == 1
    assert torch.allclose(q.alpha.data, mse_step(x, 0, 15) * 15)


def test_calibration_moves_alpha_and_sets_initialized():
    torch.manual_seed(1)
    q = build_quantizer("pact", "act", 4).eval()
    set_calibration(q, True)
    with torch.no_grad():
        for scale in (1.0, 2.0, 3.0):
            q(torch.rand(2, 4, 8, 8) * scale)
    set_calibration(q, False)
    assert int(q.initialized) == 1
    assert 0.5 < q.alpha.item() < 3.0
