"""XNOR and TWN ternary weights against hand-computed values, per-channel scales and STE."""
import pytest
import torch

from quant_det.quantizers import build_quantizer


def test_xnor_per_tensor_and_per_channel_hand_values():
    w = torch.tensor([[-2.0, 1.0], [0.0, -0.5]])
    y = build_quantizer("xnor", "weight", 1)(w)
    assert torch.equal(y, torch.tensor([[-0.875, 0.875], [0.875, -0.875]]))  # mean|w| = 3.5 / 4
    y = build_quantizer("xnor", "weight", 1, per_channel=True, num_channels=2)(w)
    assert torch.equal(y, torch.tensor([[-1.5, 1.5], [0.25, -0.25]]))


def test_xnor_ste_is_clipped_to_unit_interval():
    w = torch.tensor([-2.0, -0.5, 0.3, 1.5], requires_grad=True)
    build_quantizer("xnor", "weight", 1)(w).backward(torch.ones(4))
    assert torch.equal(w.grad, torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_ternary_hand_values_and_identity_ste():
    w = torch.tensor([-1.0, -0.4, 0.05, 0.2, 0.9, 1.5], requires_grad=True)
    # mean|w| = 4.05 / 6, delta = 0.7 * that = 0.4725 (> 0.4); alpha = mean(1.0, 0.9, 1.5) = 3.4 / 3
    y = build_quantizer("ternary", "weight", 2)(w)
    a = 3.4 / 3
    assert torch.allclose(y, torch.tensor([-a, 0, 0, 0, a, a]))
    assert y.unique().numel() == 3
    y.backward(torch.arange(6.0))
    assert torch.equal(w.grad, torch.arange(6.0))


def test_ternary_per_channel_has_one_alpha_per_output_channel():
    w = torch.tensor([[1.0, -1.0, 0.1, 0.0], [10.0, 8.0, -12.0, 0.5]]).view(2, 4, 1, 1)
    y = build_quantizer("ternary", "weight", 2, per_channel=True, num_channels=2)(w).view(2, 4)
    assert torch.allclose(y, torch.tensor([[1.0, -1.0, 0.0, 0.0], [10.0, 10.0, -10.0, 0.0]]))


@pytest.mark.parametrize("method,bits", [("xnor", 2), ("ternary", 3)])
def test_wrong_bits_raise(method, bits):
    with pytest.raises(ValueError, match=f"bits={bits}"):
        build_quantizer(method, "weight", bits)
