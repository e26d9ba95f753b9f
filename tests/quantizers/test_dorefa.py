"""DoReFa: activation/weight grids against hand-computed values, STE gradients, per-channel scales."""
import math

import torch

from quant_det.quantizers import build_quantizer
from quant_det.quantizers.dorefa import DoReFaQuantizer


def test_act_two_bits_matches_hand_values_and_clamp_ste():
    x = torch.tensor([-0.5, 0.1, 0.2, 0.5, 0.6, 0.9, 1.2], requires_grad=True)
    y = build_quantizer("dorefa", "act", 2)(x)
    # n = 3: round(3 * clamp(x, 0, 1)) / 3 with round half to even (1.5 -> 2)
    assert torch.allclose(y, torch.tensor([0, 0, 1, 2, 2, 3, 3]) / 3.0)
    y.backward(torch.full_like(x, 2.0))
    assert torch.equal(x.grad, torch.tensor([0.0, 2, 2, 2, 2, 2, 0]))


def test_act_levels_replace_two_to_the_bits():
    x = torch.tensor([0.2, 0.3, 0.7, 0.8])
    y = build_quantizer("dorefa", "act", 4, levels=3)(x)
    assert torch.allclose(y, torch.tensor([0.0, 0.5, 0.5, 1.0]))


def test_weight_two_bits_matches_tanh_formula():
    w = [-1.0, -0.2, 0.0, 0.3, 2.0]
    t = [math.tanh(v) for v in w]
    top = max(abs(v) for v in t)
    expected = [2 * round(3 * (v / (2 * top) + 0.5)) / 3 - 1 for v in t]
    y = build_quantizer("dorefa", "weight", 2)(torch.tensor(w))
    assert torch.allclose(y, torch.tensor(expected), atol=1e-6)
    assert [round(1.5 * (v + 1)) for v in expected] == [0, 1, 2, 2, 3]  # codes of the hand values


def test_weight_gradient_is_the_formula_with_round_as_identity():
    w = torch.randn(4, 3, requires_grad=True)
    g = torch.randn(4, 3)
    build_quantizer("dorefa", "weight", 3)(w).backward(g)
    ref_w = w.detach().clone().requires_grad_()
    (torch.tanh(ref_w) / torch.tanh(ref_w).abs().max()).backward(g)
    assert torch.allclose(w.grad, ref_w.grad, atol=1e-6)


def test_weight_uniform_variant_drops_tanh():
    w = torch.tensor([-2.0, -0.5, 0.4, 1.0])
    y = DoReFaQuantizer("weight", 2, uniform=True)(w)
    # r = w / 4 + 0.5 = [0, .375, .6, .75]; round(3r) = [0, 1, 2, 2]
    assert torch.allclose(y, torch.tensor([-1.0, -1 / 3, 1 / 3, 1 / 3]))


def test_weight_one_bit_is_sign_times_mean_abs_with_identity_grad():
    w = torch.tensor([-2.0, 1.0, 0.0, 3.0], requires_grad=True)
    y = build_quantizer("dorefa", "weight", 1)(w)
    assert torch.equal(y, torch.tensor([-1.5, 1.5, 1.5, 1.5]))
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert torch.equal(w.grad, torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_outputs_take_at_most_levels_values():
    torch.manual_seed(0)
    cases = [("act", 3, 0), ("act", 4, 5), ("weight", 3, 0), ("weight", 2, 3), ("weight", 1, 0)]
    for role, bits, levels in cases:
        q = build_quantizer("dorefa", role, bits, levels)
        assert q(torch.randn(4000)).unique().numel() <= q.levels


def test_per_channel_one_bit_has_one_scale_per_output_channel():
    w = torch.tensor([[1.0, -3.0], [0.5, 0.5]]).view(2, 2, 1, 1)
    y = build_quantizer("dorefa", "weight", 1, per_channel=True, num_channels=2)(w)
    assert torch.equal(y.view(2, 2), torch.tensor([[2.0, -2.0], [0.5, 0.5]]))


def _reference_weight(w, n, per_channel, use_tanh):
    """The op-by-op DoReFa weight formula through autograd (the implementation before issue 14)."""
    from quant_det.quantizers.ste import round_ste
    t = torch.tanh(w) if use_tanh else w
    top = t.abs().flatten(1).amax(1).view(-1, *[1] * (w.dim() - 1)) if per_channel else t.abs().amax()
    r = t / (2 * top.clamp_min(1e-12)) + 0.5
    return 2 * (round_ste(r * n) / n) - 1


def test_fused_weight_function_matches_the_op_by_op_formula():
    """Outputs bit-identical, gradients (incl. the max's, with ties) equal to autograd's."""
    torch.manual_seed(0)
    for per_channel in (False, True):
        for uniform in (False, True):
            for bits in (2, 4):
                w = torch.randn(6, 3, 3, 3)
                w[1, 0, 0, 0], w[1, 2, 1, 1] = 3.0, -3.0  # a +/- tie for the max (channel 1 and tensor)
                if per_channel:
                    w[3, 0, 0, 0] = w[3, 0, 0, 1] = 3.5  # a tie of one value at two positions
                g = torch.randn_like(w)
                q = DoReFaQuantizer("weight", bits, per_channel=per_channel, num_channels=6, uniform=uniform)
                a = w.clone().requires_grad_()
                out = q(a)
                out.backward(g)
                b = w.clone().requires_grad_()
                ref = _reference_weight(b, 2 ** bits - 1, per_channel, not uniform)
                ref.backward(g)
                assert torch.equal(out, ref), (per_channel, uniform, bits)
                assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6), (per_channel, uniform, bits)


def test_per_tensor_repeated_max_gets_the_max_gradient_once():
    """Per tensor, a max value repeated at two positions takes the whole max term at one of them
    (documented in DoReFaWeight); every other position's gradient, and the sum, match autograd."""
    torch.manual_seed(1)
    w = torch.randn(4, 5)
    w[0, 1] = w[2, 3] = 3.0
    g = torch.randn_like(w)
    a = w.clone().requires_grad_()
    DoReFaQuantizer("weight", 2)(a).backward(g)
    b = w.clone().requires_grad_()
    _reference_weight(b, 3, False, True).backward(g)
    others = torch.ones_like(w, dtype=torch.bool)
    others[0, 1] = others[2, 3] = False
    assert torch.allclose(a.grad[others], b.grad[others], rtol=1e-5, atol=1e-6)
    assert torch.allclose(a.grad.sum(), b.grad.sum(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a.grad[0, 1], b.grad[0, 1])


def test_fused_weight_function_channels_last_and_expanded_gradient():
    """A channels_last weight and the expanded gradient of .sum() give autograd's gradient."""
    torch.manual_seed(2)
    w = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)
    g = torch.randn_like(w)  # channels_last, as the gradient of a channels_last output
    for per_channel in (False, True):
        for grad in (None, g):
            a = w.clone().requires_grad_()
            out = DoReFaQuantizer("weight", 2, per_channel=per_channel, num_channels=4)(a)
            out.sum().backward() if grad is None else out.backward(grad)
            b = w.clone().requires_grad_()
            ref = _reference_weight(b, 3, per_channel, True)
            ref.sum().backward() if grad is None else ref.backward(grad)
            assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6)
