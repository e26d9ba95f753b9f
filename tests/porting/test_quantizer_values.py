"""convert_quantizer: their quantizer tensors -> our quantizer state giving the same output as
their forward (tests/porting/original_quant.py), or NotConvertible with the reason."""
import pytest
import torch
from porting import original_quant as theirs

from quant_det.porting.quantizer_values import NotConvertible, SourceQuantizer, convert_quantizer
from quant_det.quantizers import build_quantizer

torch.set_num_threads(1)
C = 8  # output channels of the test weight


def weight():
    return torch.randn(C, 4, 3, 3, generator=torch.Generator().manual_seed(0))


def activation(signed=False):
    x = 1.5 * torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    return x if signed else x.relu()


def clip(shape, seed=2):
    return 0.5 + torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def ours(conversion, method, role, bits, levels=0, per_channel=False):
    """Our quantizer loaded with the converted state, in eval mode."""
    q = build_quantizer(method, role, bits, levels, per_channel=per_channel, num_channels=C)
    q.load_state_dict(conversion.state)
    return q.eval()


def assert_same_output(conversion, method, role, bits, x, expected, levels=0, per_channel=False):
    with torch.no_grad():
        got = ours(conversion, method, role, bits, levels, per_channel)(x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert conversion.state["initialized"].item() == 1


@pytest.mark.parametrize("bits,levels", [(2, 0), (3, 0), (2, 3)])
def test_unsigned_lsq_activations_into_lsq_pact_and_lqnet(bits, levels):
    x, c = activation(), clip(1)
    n = levels or 2 ** bits
    expected = theirs.lsq(x, c, n, half_range=True)
    conv = convert_quantizer(SourceQuantizer("lsq", bits, levels), "act", {"clip_val": c})
    torch.testing.assert_close(conv.state["step"], c[0] / (n - 1))
    assert conv.state["signed"].item() == 0
    assert_same_output(conv, "lsq", "act", bits, x, expected, levels)
    conv = convert_quantizer(SourceQuantizer("lsq", bits, levels, target="pact"), "act", {"clip_val": c})
    assert_same_output(conv, "pact", "act", bits, x, expected, levels)
    if levels == 0:
        conv = convert_quantizer(SourceQuantizer("lsq", bits, target="lqnet"), "act", {"clip_val": c})
        assert_same_output(conv, "lqnet", "act", bits, x, expected)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_native_signed_lsq_weights_per_channel(bits):
    w, c = weight(), clip((C, 1, 1, 1))
    conv = convert_quantizer(SourceQuantizer("lsq-native", bits, per_channel=True), "weight",
                             {"clip_val": c}, num_channels=C)
    torch.testing.assert_close(conv.state["step"], c.reshape(-1) / 2 ** (bits - 1))
    assert conv.state["signed"].item() == 1
    expected = theirs.lsq(w, c, 2 ** bits, half_range=False, native=True)
    assert_same_output(conv, "lsq", "weight", bits, w, expected, per_channel=True)


def test_signed_lsq_with_even_levels_has_no_zero_level_for_our_lsq_but_fits_our_lqnet():
    w, c = weight(), clip((C, 1, 1, 1))
    source = SourceQuantizer("lsq", 2, per_channel=True)
    with pytest.raises(NotConvertible, match=r"their levels \[-\d.*\] .* are not our lsq"):
        convert_quantizer(source, "weight", {"clip_val": c}, num_channels=C)
    conv = convert_quantizer(SourceQuantizer("lsq", 2, target="lqnet", per_channel=True), "weight",
                             {"clip_val": c}, num_channels=C)
    # levels {-1, -1/3, 1/3, 1} * c = +-(c/3) +- (2c/3)
    torch.testing.assert_close(conv.state["basis"], c.reshape(-1, 1) / 3 * torch.tensor([1.0, 2.0]))
    expected = theirs.lsq(w, c, 4, half_range=False)
    assert_same_output(conv, "lqnet", "weight", 2, w, expected, per_channel=True)


@pytest.mark.parametrize("bits,levels", [(2, 3), (3, 7)])
def test_signed_lsq_with_odd_levels_into_lsq(bits, levels):
    w, c = weight(), clip((C, 1, 1, 1))
    conv = convert_quantizer(SourceQuantizer("lsq", bits, levels, per_channel=True), "weight",
                             {"clip_val": c}, num_channels=C)
    torch.testing.assert_close(conv.state["step"], 2 * c.reshape(-1) / (levels - 1))
    expected = theirs.lsq(w, c, levels, half_range=False)
    assert_same_output(conv, "lsq", "weight", bits, w, expected, levels, per_channel=True)


def test_signed_lsq_activations():
    x, c = activation(signed=True), clip(1)
    conv = convert_quantizer(SourceQuantizer("lsq-native", 3, signed=True), "act", {"clip_val": c})
    assert conv.state["signed"].item() == 1
    expected = theirs.lsq(x, c, 8, half_range=False, native=True)
    assert_same_output(conv, "lsq", "act", 3, x, expected)


@pytest.mark.parametrize("target", ["pact", "lsq"])
def test_pact(target):
    x, c = activation(), clip(1)
    conv = convert_quantizer(SourceQuantizer("pact", 2, target=target), "act", {"clip_val": c})
    assert_same_output(conv, target, "act", 2, x, theirs.pact(x, c, 4))


def lqnet_tensors(bits, levels, groups, half_range, seed=3):
    basis = 0.1 + torch.rand(bits, groups, generator=torch.Generator().manual_seed(seed))
    return {"basis": basis, "auxil": torch.zeros(bits, groups),
            "codec_vector": theirs.lqnet_codes(levels, bits, half_range),
            "codec_index": torch.arange(levels, dtype=torch.int32),
            "thrs_multiplier": theirs.lqnet_thresholds(levels, half_range)}


@pytest.mark.parametrize("bits", [2, 3])
def test_lqnet_weights_per_channel(bits):
    w, t = weight(), lqnet_tensors(bits, 2 ** bits, C, half_range=False)
    conv = convert_quantizer(SourceQuantizer("lqnet", bits, per_channel=True), "weight", t, num_channels=C)
    torch.testing.assert_close(conv.state["basis"], t["basis"].t())
    expected = theirs.lqnet(w, t["basis"], t["codec_vector"], t["thrs_multiplier"])
    assert_same_output(conv, "lqnet", "weight", bits, w, expected, per_channel=True)


def test_lqnet_activations():
    x, t = activation(), lqnet_tensors(2, 4, 1, half_range=True)
    conv = convert_quantizer(SourceQuantizer("lqnet", 2), "act", t)
    expected = theirs.lqnet(x, t["basis"], t["codec_vector"], t["thrs_multiplier"])
    assert_same_output(conv, "lqnet", "act", 2, x, expected)


def test_their_three_level_lqnet_is_binary_and_becomes_our_one_bit_lqnet():
    w, t = weight(), lqnet_tensors(1, 3, C, half_range=False)
    expected = theirs.lqnet(w, t["basis"], t["codec_vector"], t["thrs_multiplier"])
    assert all(len(row.unique()) == 2 for row in expected.reshape(C, -1))  # {-v, v} per channel
    conv = convert_quantizer(SourceQuantizer("lqnet", 2, levels=3, per_channel=True), "weight", t,
                             num_channels=C)
    assert "bits=1, levels=2" in conv.summary
    assert_same_output(conv, "lqnet", "weight", 1, w, expected, per_channel=True)


def test_lqnet_thresholds_other_than_midpoints_are_refused():
    t = lqnet_tensors(2, 4, C, half_range=False)
    t["thrs_multiplier"] = theirs.lqnet_thresholds(4, False, scale=0.3)
    with pytest.raises(NotConvertible, match="midpoint"):
        convert_quantizer(SourceQuantizer("lqnet", 2, per_channel=True), "weight", t, num_channels=C)


def test_level_num_and_leaves_are_checked():
    c = clip(1)
    with pytest.raises(NotConvertible, match="level_num is 8, but bits=2 levels=0 give 4"):
        convert_quantizer(SourceQuantizer("lsq", 2), "act", {"clip_val": c}, level_num=torch.tensor([8.0]))
    with pytest.raises(NotConvertible, match="their lsq stores clip_val; found alpha0, alpha1"):
        convert_quantizer(SourceQuantizer("lsq", 2), "act", {"alpha0": c, "alpha1": c})
    with pytest.raises(NotConvertible, match="stores basis, codec_vector; found clip_val"):
        convert_quantizer(SourceQuantizer("lqnet", 2), "act", {"clip_val": c})
    with pytest.raises(ValueError, match="act target='lqnet'|weight method='pact'"):
        convert_quantizer(SourceQuantizer("pact", 2), "weight", {"clip_val": c})


def test_groups_map_onto_output_channels():
    half = clip((C // 2, 1, 1, 1))
    conv = convert_quantizer(SourceQuantizer("lsq-native", 2, per_channel=True), "weight",
                             {"clip_val": half}, num_channels=C)
    torch.testing.assert_close(conv.state["step"], half.reshape(-1).repeat_interleave(2) / 2)
    w = weight()
    assert_same_output(conv, "lsq", "weight", 2, w, theirs.lsq(w, half, 4, False, native=True), per_channel=True)
    with pytest.raises(NotConvertible, match="per tensor .*--weight-per-channel"):
        convert_quantizer(SourceQuantizer("lsq-native", 2), "weight", {"clip_val": clip((C, 1, 1, 1))})
    same = torch.full((C, 1, 1, 1), 0.7)
    conv = convert_quantizer(SourceQuantizer("lsq-native", 2), "weight", {"clip_val": same})
    assert conv.state["step"].shape == () and conv.state["step"].item() == pytest.approx(0.35)


def test_initialized_keeps_converted_values_in_training():
    x, c = activation(), clip(1)
    conv = convert_quantizer(SourceQuantizer("lsq", 2), "act", {"clip_val": c})
    q = ours(conv, "lsq", "act", 2).train()
    q(x)
    torch.testing.assert_close(q.step.detach(), c[0] / 3)
    assert q.signed.item() == 0
