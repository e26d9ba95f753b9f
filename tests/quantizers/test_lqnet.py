"""LQ-Net: levels from the basis, nearest-level encoding, STE, least-squares basis fit (QEM),
moving-average update, ternary, per-channel bases and calibration."""
import torch

from quant_det.quantizers import build_quantizer, set_calibration
from quant_det.quantizers.lqnet import encode, fit_basis, make_codes, qem


def lqnet(role, bits, basis, **kwargs):
    q = build_quantizer("lqnet", role, bits, **kwargs).eval()
    q.basis.copy_(torch.tensor(basis))
    q.initialized.fill_(1)
    return q


def sq_error(x, basis, codes):
    index, values, _ = encode(x, basis, codes)
    return ((torch.gather(values, 1, index) - x) ** 2).sum()


def test_weight_levels_are_signed_basis_combinations_and_encoding_is_nearest():
    # basis [0.5, 1.0] -> levels {-1.5, -0.5, 0.5, 1.5}
    x = torch.tensor([-3.0, -0.9, -0.1, 0.2, 0.99, 1.1, 4.0], requires_grad=True)
    y = lqnet("weight", 2, [0.5, 1.0])(x)
    assert torch.equal(y, torch.tensor([-1.5, -0.5, -0.5, 0.5, 0.5, 1.5, 1.5]))
    y.backward(torch.arange(7.0))
    assert torch.equal(x.grad, torch.arange(7.0))  # plain straight-through for weights


def test_act_levels_use_zero_one_codes_and_clip_the_ste():
    # basis [1, 2] -> levels {0, 1, 2, 3}
    x = torch.tensor([-1.0, 0.4, 0.6, 2.4, 2.6, 5.0], requires_grad=True)
    y = lqnet("act", 2, [1.0, 2.0])(x)
    assert torch.equal(y, torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 3.0]))
    y.backward(torch.ones(6))
    assert torch.equal(x.grad, torch.tensor([0.0, 1, 1, 1, 1, 0]))


def test_ternary_weights_have_three_levels():
    q = lqnet("weight", 2, [0.8], levels=3)
    assert torch.equal(make_codes("weight", 3, 2), torch.tensor([[-1.0], [0.0], [1.0]]))
    y = q(torch.tensor([-2.0, -0.5, -0.3, 0.1, 0.45, 3.0]))
    assert torch.equal(y, torch.tensor([-0.8, -0.8, 0.0, 0.0, 0.8, 0.8]))


def test_least_squares_fit_recovers_the_generating_basis():
    codes = make_codes("weight", 8, 3)
    true = torch.tensor([[0.3, 0.7, 1.9]])
    x = (true @ codes.t()).repeat(1, 5)  # every level, 5 times
    start = true * torch.tensor([[1.05, 0.97, 1.02]])
    index, _, sorted_codes = encode(x, start, codes)
    assert torch.allclose(fit_basis(x, start, codes, index, sorted_codes), true, atol=1e-5)


def test_basis_update_lowers_quantization_error_on_a_fixed_tensor():
    torch.manual_seed(0)
    x = torch.randn(1, 4000)
    codes = make_codes("weight", 8, 3)
    basis = torch.tensor([[0.1, 0.2, 0.4]])
    errors = [sq_error(x, basis, codes)]
    for _ in range(3):
        basis = qem(x, basis, codes, 1)
        errors.append(sq_error(x, basis, codes))
    assert errors[1] < 0.5 * errors[0] and errors[3] <= errors[1]


def test_training_forward_applies_momentum_0_9_to_the_fitted_basis():
    torch.manual_seed(1)
    x = torch.randn(6, 50)
    q = lqnet("weight", 2, [0.2, 0.4]).train()
    old = q.basis.clone()
    index, _, sorted_codes = encode(x.reshape(1, -1), old.view(1, 2), q.codes)
    fitted = fit_basis(x.reshape(1, -1), old.view(1, 2), q.codes, index, sorted_codes).view(2)
    q(x)
    assert torch.allclose(q.basis, 0.9 * old + 0.1 * fitted)
    flat = x.reshape(1, -1)
    assert sq_error(flat, q.basis.view(1, 2), q.codes) < sq_error(flat, old.view(1, 2), q.codes)


def test_outputs_take_at_most_levels_values():
    torch.manual_seed(2)
    for role, bits, levels in [("weight", 3, 0), ("act", 2, 0), ("weight", 2, 3)]:
        q = build_quantizer("lqnet", role, bits, levels).train()
        assert q(torch.randn(3000)).unique().numel() <= q.levels


def test_per_channel_init_gives_distinct_bases():
    torch.manual_seed(3)
    w = torch.randn(3, 4, 3, 3) * torch.tensor([0.1, 1.0, 10.0]).view(3, 1, 1, 1)
    q = build_quantizer("lqnet", "weight", 2, per_channel=True, num_channels=3).train()
    q(w)
    assert q.basis.shape == (3, 2) and int(q.initialized) == 1
    top = q.basis.abs().sum(1)
    assert top[0] < top[1] < top[2]


def test_calibration_refits_basis_and_sets_initialized():
    torch.manual_seed(4)
    q = build_quantizer("lqnet", "act", 2).eval()
    before = q.basis.clone()
    set_calibration(q, True)
    with torch.no_grad():
        out = q(torch.rand(2, 3, 8, 8) * 0.3)
    set_calibration(q, False)
    assert int(q.initialized) == 1
    assert not torch.allclose(q.basis, before)
    assert q.basis.abs().sum() < 1.0 and out.unique().numel() <= 4
