"""build_quantizer / QUANTIZERS / set_calibration: validation messages, attributes, calibration flags."""
import pytest
import torch
from torch import nn

from quant_det.quantizers import QUANTIZERS, Quantizer, build_quantizer, methods_for, set_calibration

WEIGHT_METHODS, ACT_METHODS = methods_for("weight"), methods_for("act")

BITS = {"xnor": 1, "ternary": 2}


def test_registry_holds_every_configured_method():
    assert set(QUANTIZERS) == set(WEIGHT_METHODS) | set(ACT_METHODS)


def test_methods_and_roles_come_from_the_registered_classes():
    assert WEIGHT_METHODS == ("none", "dorefa", "lsq", "lqnet", "xnor", "ternary")
    assert ACT_METHODS == ("none", "dorefa", "pact", "lsq", "lqnet")
    for role, methods in (("weight", WEIGHT_METHODS), ("act", ACT_METHODS)):
        assert all(role in QUANTIZERS[m].ROLES for m in methods)
    with pytest.raises(ValueError, match=r"role='bias'.*'weight', 'act'"):
        methods_for("bias")


@pytest.mark.parametrize("role,methods", [("weight", WEIGHT_METHODS), ("act", ACT_METHODS)])
def test_every_allowed_method_builds_with_attributes(role, methods):
    for method in methods:
        bits = BITS.get(method, 3)
        q = build_quantizer(method, role, bits)
        assert isinstance(q, Quantizer)
        assert (q.method, q.role, q.bits) == (method, role, bits)
        expected = {"none": 0, "xnor": 2, "ternary": 3}.get(method, 8)
        assert q.levels == expected
        assert f"method={method}" in repr(q) and f"bits={bits}" in repr(q)


def test_levels_zero_means_two_to_the_bits_and_explicit_levels_kept():
    assert build_quantizer("dorefa", "act", 4).levels == 16
    assert build_quantizer("dorefa", "act", 4, levels=10).levels == 10
    assert build_quantizer("lqnet", "weight", 2, levels=3).levels == 3


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(method="foo", role="act", bits=4), ["method='foo'", "'pact'", "'lqnet'"]),
        (dict(method="pact", role="weight", bits=4), ["method='pact'", "'xnor'", "'ternary'"]),
        (dict(method="xnor", role="act", bits=1), ["method='xnor'", "'pact'"]),
        (dict(method="lsq", role="bias", bits=4), ["role='bias'", "'weight'", "'act'"]),
        (dict(method="lsq", role="act", bits=9), ["bits=9", "1..8"]),
        (dict(method="lsq", role="act", bits=0), ["bits=0", "1..8"]),
        (dict(method="dorefa", role="act", bits=4, levels=17), ["levels=17", "2..16"]),
        (dict(method="dorefa", role="act", bits=4, levels=1), ["levels=1", "2..16"]),
        (dict(method="dorefa", role="weight", bits=1, levels=3), ["levels=3", "2..2"]),
        (dict(method="xnor", role="weight", bits=2), ["bits=2", "[1]"]),
        (dict(method="ternary", role="weight", bits=2, levels=4), ["levels=4", "[0, 3]"]),
        (dict(method="ternary", role="weight", bits=1), ["bits=1", "[2]"]),
        (dict(method="lqnet", role="act", bits=3, levels=5), ["levels=5", "[0, 8]"]),
        (dict(method="lqnet", role="weight", bits=3, levels=5), ["levels=5", "[0, 8, 3]"]),
        (dict(method="lsq", role="weight", bits=1), ["levels=2", "3..256"]),
        (dict(method="lsq", role="act", bits=4, per_channel=True), ["per_channel=True", "[False]"]),
        (dict(method="lsq", role="weight", bits=4, per_channel=True, num_channels=0), ["num_channels=0"]),
        (dict(method="none", role="act", bits=16), ["bits=16", "1..8"]),
    ],
)
def test_bad_arguments_raise_value_error_naming_value_and_choices(kwargs, words):
    with pytest.raises(ValueError) as info:
        build_quantizer(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_none_accepts_32_bits_as_full_precision():
    q = build_quantizer("none", "weight", 32)
    assert (q.bits, q.levels) == (32, 0)


def test_per_channel_quantizer_rejects_wrong_channel_count():
    q = build_quantizer("lsq", "weight", 4, per_channel=True, num_channels=3)
    with pytest.raises(ValueError, match=r"x.shape\[0\]=5.*\[3\]"):
        q(torch.randn(5, 2))


def test_set_calibration_flags_every_nested_quantizer():
    model = nn.Sequential(
        nn.Conv2d(1, 1, 1), build_quantizer("lsq", "act", 4), nn.Sequential(build_quantizer("pact", "act", 4))
    )
    assert set_calibration(model, True) == 2
    assert [m.calibrating for m in model.modules() if isinstance(m, Quantizer)] == [True, True]
    assert set_calibration(model, False) == 2
    assert not any(m.calibrating for m in model.modules() if isinstance(m, Quantizer))


def test_learned_ranges_are_parameters_and_flags_are_buffers():
    lsq = build_quantizer("lsq", "weight", 4, per_channel=True, num_channels=6)
    assert [n for n, _ in lsq.named_parameters()] == ["step"]
    assert set(lsq.state_dict()) == {"step", "initialized", "signed", "_extra_state"}
    assert lsq.step.shape == (6,)
    assert [n for n, _ in build_quantizer("pact", "act", 4).named_parameters()] == ["alpha"]
    lq = build_quantizer("lqnet", "weight", 2)
    assert list(lq.parameters()) == [] and set(lq.state_dict()) == {"basis", "initialized", "_extra_state"}


def test_loaded_initialized_flag_prevents_reinitialization():
    src = build_quantizer("lsq", "act", 4).train()
    src(torch.rand(8, 3))
    dst = build_quantizer("lsq", "act", 4).train()
    dst.load_state_dict(src.state_dict())
    dst(10 * torch.rand(8, 3) - 5)
    assert torch.equal(dst.step.data, src.step.data)
    assert int(dst.signed) == 0 and dst.bounds() == (0, 15)
