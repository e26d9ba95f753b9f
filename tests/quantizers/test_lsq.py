"""LSQ: grid values, the paper's step gradient (incl. grad scale), init rule, sign detection,
per-channel steps and calibration."""
import math

import torch

from quant_det.quantizers import build_quantizer, set_calibration
from quant_det.quantizers.lsq import mse_step


def lsq(role, bits, step, **kwargs):
    q = build_quantizer("lsq", role, bits, **kwargs).eval()
    q.step.data.copy_(torch.as_tensor(step))
    q.initialized.fill_(1)
    return q


def paper_step_grad(x, s, g, qn, qp, n):
    """sum_i g_i * dv_hat_i/ds (Esser et al. eq. 3) * 1/sqrt(N Qp)."""
    v = x / s
    inner = torch.where(v <= -qn, -float(qn), torch.where(v >= qp, float(qp), torch.round(v) - v))
    return (g * inner).sum() / math.sqrt(n * qp)


def test_weight_three_bits_matches_hand_values():
    x = torch.tensor([-3.0, -1.1, -0.2, 0.3, 0.8, 1.4, 2.0])
    # Qn = 4, Qp = 3, s = 0.5: x/s = [-6, -2.2, -0.4, 0.6, 1.6, 2.8, 4] -> [-4, -2, 0, 1, 2, 3, 3]
    y = lsq("weight", 3, 0.5)(x)
    assert torch.equal(y, torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 1.5]))


def test_step_and_input_gradients_follow_the_paper():
    torch.manual_seed(0)
    x = torch.tensor([-3.0, -1.1, -0.2, 0.3, 0.8, 1.4, 2.0], requires_grad=True)
    g = torch.randn(7)
    q = lsq("weight", 3, 0.5)
    q(x).backward(g)
    assert torch.allclose(q.step.grad, paper_step_grad(x.detach(), 0.5, g, 4, 3, 7), atol=1e-6)
    inside = torch.tensor([0.0, 1, 1, 1, 1, 1, 0])
    assert torch.equal(x.grad, g * inside)


def test_activation_grad_scale_uses_features_per_example():
    torch.manual_seed(1)
    x = torch.rand(4, 3, 5) * 2
    g = torch.randn(4, 3, 5)
    q = lsq("act", 2, 0.3)
    q(x).backward(g)
    assert torch.allclose(q.step.grad, paper_step_grad(x, 0.3, g, 0, 3, 15), atol=1e-5)


def test_training_init_uses_paper_rule_and_detects_sign():
    x = torch.tensor([[0.0, 1.0, 2.0, 5.0]])
    q = build_quantizer("lsq", "act", 2).train()
    y = q(x)
    assert int(q.initialized) == 1 and int(q.signed) == 0 and q.bounds() == (0, 3)
    assert torch.allclose(q.step.data, torch.tensor(2 * 2.0 / math.sqrt(3)))
    assert y.unique().numel() <= 4
    q2 = build_quantizer("lsq", "act", 2).train()
    q2(x - 1)
    assert int(q2.signed) == 1 and q2.bounds() == (2, 1)


def test_odd_levels_use_symmetric_grid():
    q = lsq("weight", 3, 1.0, levels=5)
    assert q.bounds() == (2, 2)
    assert torch.equal(q(torch.tensor([-9.0, -1.2, 0.4, 9.0])), torch.tensor([-2.0, -1.0, 0.0, 2.0]))


def test_per_channel_steps_are_distinct_and_have_per_channel_gradients():
    torch.manual_seed(2)
    w = torch.randn(3, 2, 3, 3) * torch.tensor([0.1, 1.0, 10.0]).view(3, 1, 1, 1)
    q = build_quantizer("lsq", "weight", 4, per_channel=True, num_channels=3).train()
    w.requires_grad_()
    g = torch.randn_like(w)
    q(w).backward(g)
    expected = 2 * w.detach().abs().flatten(1).mean(1) / math.sqrt(7)
    assert torch.allclose(q.step.data, expected)
    assert q.step.data[0] < q.step.data[1] < q.step.data[2]
    for c in range(3):
        ref = paper_step_grad(w.detach()[c], q.step.data[c], g[c], 8, 7, 18)
        assert torch.allclose(q.step.grad[c], ref, atol=1e-5)
        v = w.detach()[c] / q.step.data[c]
        assert torch.equal(w.grad[c], g[c] * ((v > -8) & (v < 7)))


def test_mse_step_beats_neighbouring_steps():
    torch.manual_seed(3)
    x = torch.randn(5000)
    s = mse_step(x, 8, 7)

    def err(step):
        return ((torch.round(torch.clamp(x / step, -8, 7)) * step - x) ** 2).sum()

    assert err(s) <= err(s * 1.1) and err(s) <= err(s * 0.9)


def test_calibration_averages_mse_steps_over_batches_and_sets_initialized():
    torch.manual_seed(4)
    batches = [torch.rand(2, 3, 8, 8), 3 * torch.rand(2, 3, 8, 8)]
    q = build_quantizer("lsq", "act", 4).eval()
    set_calibration(q, True)
    with torch.no_grad():
        outputs = [q(b) for b in batches]
    set_calibration(q, False)
    expected = (mse_step(batches[0], 0, 15) + mse_step(batches[1], 0, 15)) / 2
    assert int(q.initialized) == 1
    assert torch.allclose(q.step.data, expected)
    assert all(o.unique().numel() <= 16 for o in outputs)
