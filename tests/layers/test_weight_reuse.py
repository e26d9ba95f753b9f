"""Quantized-weight reuse within one forward (layers/weight_reuse.py): a conv called 5 times per
forward, like a RetinaNet/FCOS head conv over the FPN levels, against the same model recomputing
its quantized weight on every call."""
import copy

import pytest
import torch
from torch import nn

from quant_det.layers import QuantConv2d, enable_weight_reuse
from quant_det.layers.weight_reuse import _scopes
from quant_det.quantizers import build_quantizer

LEVELS = 5
# (weight method, act method, per_channel, weight levels)
CASES = [("dorefa", "dorefa", False, 0), ("dorefa", "pact", False, 0), ("lsq", "lsq", False, 0),
         ("lsq", "lsq", True, 0), ("lqnet", "lqnet", False, 0), ("lqnet", "lqnet", True, 0),
         ("lqnet", "lqnet", False, 3), ("xnor", "lsq", False, 0), ("ternary", "lsq", False, 0)]


class SharedHead(nn.Module):
    """One QuantConv2d applied to each of `LEVELS` feature maps; returns the list of outputs."""

    def __init__(self, wmethod, amethod, per_channel, wlevels):
        super().__init__()
        wbits = {"xnor": 1, "ternary": 2}.get(wmethod, 2 if wlevels == 3 else 4)
        conv = nn.Conv2d(8, 6, 3, padding=1)
        self.conv = QuantConv2d.from_float(
            conv, build_quantizer(wmethod, "weight", wbits, wlevels, per_channel, 6),
            build_quantizer(amethod, "act", 4))

    def forward(self, features):
        return [self.conv(f) for f in features]


def features(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 8, 16 >> i, 16 >> i, generator=g).relu() for i in range(LEVELS)]


def pair(case):
    """(model recomputing on every call, copy with weight reuse), identical initial state."""
    torch.manual_seed(0)
    plain = SharedHead(*case)
    return plain, enable_weight_reuse(copy.deepcopy(plain))


def count_calls(quantizer):
    calls = []
    quantizer.register_forward_hook(lambda *_: calls.append(1))
    return calls


def loss_of(outputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    return sum((o * torch.randn(o.shape, generator=g)).sum() for o in outputs)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(a, b):
    assert a.keys() == b.keys() and "conv.weight" in a
    for name in a:  # summed before instead of after the quantizer's backward: rounding only
        scale = a[name].abs().max().item()
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6 * scale, msg=name)


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_training_forward_backward_matches_recomputing_every_call(case):
    plain, reuse = pair(case)
    for step in range(2):  # step 0 includes the data-driven inits of LSQ / LQ-Net / PACT
        x = features(step)
        out_plain, out_reuse = plain(x), reuse(x)
        for a, b in zip(out_plain, out_reuse):
            assert torch.equal(a, b)
        loss_of(out_plain).backward()
        loss_of(out_reuse).backward()
        assert_grads_close(grads(plain), grads(reuse))
        assert all(torch.equal(a, b) for a, b in zip(plain.buffers(), reuse.buffers()))
        with torch.no_grad():
            for p in plain.parameters():
                p.sub_(0.01 * p.grad)
                p.grad = None
        reuse.zero_grad(set_to_none=True)
        reuse.load_state_dict(plain.state_dict())  # the same weights again (grads differed in rounding)


@pytest.mark.parametrize("case", CASES[:4] + CASES[-2:], ids=lambda c: c[0] + "-" + c[1])
def test_weight_quantizer_runs_once_per_forward(case):
    plain, reuse = pair(case)
    reuse(features())  # first training batch: the init call and the one after it recompute
    calls = count_calls(reuse.conv.weight_quantizer)
    loss_of(reuse(features(1))).backward()
    assert len(calls) == 1
    with torch.no_grad():
        reuse.eval()(features(2))
    assert len(calls) == 2
    standalone = count_calls(plain.conv.weight_quantizer)
    plain(features(1))
    assert len(standalone) == LEVELS  # no scope: every call quantizes


def test_lqnet_weight_basis_is_still_refit_on_every_training_call():
    plain, reuse = pair(("lqnet", "lqnet", False, 0))
    reuse(features())
    calls = count_calls(reuse.conv.weight_quantizer)
    reuse(features(1))
    assert len(calls) == LEVELS  # each call moves the basis: no call may reuse the previous one
    with torch.no_grad():
        reuse.eval()(features(2))
    assert len(calls) == LEVELS + 1  # eval: the basis stays, one quantization per forward


def test_in_place_weight_update_between_and_within_forwards_is_seen():
    plain, reuse = pair(("dorefa", "dorefa", False, 0))
    x = features()
    reuse(x)
    with torch.no_grad():
        plain.conv.weight.mul_(-1.5)
        reuse.conv.weight.mul_(-1.5)
    assert all(torch.equal(a, b) for a, b in zip(plain(x), reuse(x)))

    class UpdatesMidway(nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, x):
            first = self.head.conv(x[0])
            with torch.no_grad():
                self.head.conv.weight.add_(0.5)
            return first, self.head.conv(x[0])

    midway = enable_weight_reuse(UpdatesMidway(copy.deepcopy(plain)))
    first, second = midway(x)
    expected = nn.functional.conv2d(midway.head.conv.input_quantizer(x[0]),
                                    midway.head.conv._quantize_weight(), midway.head.conv.bias, padding=1)
    assert torch.equal(second, expected) and not torch.equal(first, second)


def test_gradient_accumulation_over_two_forwards_matches():
    plain, reuse = pair(("lsq", "lsq", True, 0))
    for seed in (0, 1):  # two forwards and backwards, no optimizer step in between
        loss_of(plain(features(seed)), seed).backward()
        loss_of(reuse(features(seed)), seed).backward()
    assert_grads_close(grads(plain), grads(reuse))


def test_grad_mode_and_train_eval_switches_recompute():
    plain, reuse = pair(("lsq", "lsq", False, 0))
    x = features()
    plain(x), reuse(x)  # the first training batch initializes the LSQ steps
    with torch.no_grad():
        assert reuse(x)[0].grad_fn is None
    assert all(o.grad_fn is not None for o in reuse(x))
    reuse.eval(), plain.eval()
    assert all(torch.equal(a, b) for a, b in zip(plain(x), reuse(x)))

    class SwitchesGradMode(nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, x):
            with torch.no_grad():
                self.head.conv(x[0])
            return self.head.conv(x[0])

    assert enable_weight_reuse(SwitchesGradMode(reuse))(x).grad_fn is not None


def test_scope_closes_when_the_forward_raises_and_state_dict_is_unchanged():
    plain, reuse = pair(("dorefa", "dorefa", False, 0))

    class Fails(nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, x):
            self.head(x)
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        enable_weight_reuse(Fails(reuse))(features())
    assert _scopes() == []
    assert list(plain.state_dict()) == list(reuse.state_dict())
    reuse.load_state_dict(plain.state_dict())
