"""LQ-Net's fast path gives the same numbers as the implementation it replaced (commit 4008f7f).

`OldLQNet` below is a verbatim copy of that implementation's `estimate`/`quantize` and helper
functions (per-level searchsorted + gather over the whole tensor, QEM statistics from `strided`).
Each case runs several training steps (init, STE backward, moving-average basis update), then an
eval forward and a calibration pass, on both quantizers from the same state and compares outputs,
input gradients and bases: bit for bit, with and without the compiled kernel.
"""
import itertools
import math

import pytest
import torch

from quant_det.quantizers import build_quantizer, set_calibration
from quant_det.quantizers import lqnet as lqnet_module
from quant_det.quantizers.lqnet import LQNetQuantizer
from quant_det.quantizers.ste import replace_ste

# ---- the replaced implementation (quant_det/quantizers/lqnet.py at 4008f7f), unchanged ----------
_SAMPLES = 1 << 16
_MOMENTUM = 0.9


def old_make_codes(role, levels, bits):
    if levels == 3:
        return torch.tensor([[-1.0], [0.0], [1.0]])
    digits = (-1.0, 1.0) if role == "weight" else (0.0, 1.0)
    return torch.tensor(list(itertools.product(digits, repeat=bits)))


def old_encode(flat, basis, codes):
    values, order = (basis @ codes.t()).sort(dim=1)
    thresholds = (values[:, 1:] + values[:, :-1]) / 2
    index = torch.searchsorted(thresholds.contiguous(), flat.contiguous())
    return index, values, codes[order]


def old_fit_basis(flat, basis, codes, index, sorted_codes):
    rows, num_levels = index.shape[0], codes.shape[0]
    offset = index + torch.arange(rows, device=index.device)[:, None] * num_levels
    count = torch.bincount(offset.reshape(-1), minlength=rows * num_levels).view(rows, num_levels)
    total = torch.bincount(offset.reshape(-1), flat.reshape(-1).double(), minlength=rows * num_levels)
    c = sorted_codes.double()
    gram = torch.einsum("ol,olk,olj->okj", count.double(), c, c)
    rhs = torch.einsum("ol,olk->ok", total.view(rows, num_levels), c)
    ridge = 1e-6 * (gram.diagonal(dim1=1, dim2=2).mean(1) + 1.0)
    gram = gram + ridge[:, None, None] * torch.eye(codes.shape[1], dtype=gram.dtype, device=gram.device)
    rhs = rhs + ridge[:, None] * basis.double()
    return torch.linalg.solve(gram, rhs).to(basis.dtype)


def old_strided(t, limit=_SAMPLES):
    return t[:, :: t.shape[1] // limit] if t.shape[1] > limit else t


def old_qem(flat, basis, codes, iterations):
    for _ in range(iterations):
        index, _, sorted_codes = old_encode(flat, basis, codes)
        basis = old_fit_basis(flat, basis, codes, index, sorted_codes)
    return basis


class OldLQNet(LQNetQuantizer):
    """The new class's bookkeeping with the old numerics (not registered)."""

    def estimate(self, x, calibrate):
        self.check_channels(x)
        flat = self.rows(x).float()
        if not self.per_channel:
            flat = old_strided(flat)
        if calibrate and self.is_initialized():
            return [old_qem(flat, self.basis.view(-1, self.codes.shape[1]), self.codes, 3)]
        scale = 2 * flat.abs().mean(1, keepdim=True) / math.sqrt(self.levels - 1)
        basis = scale.clamp_min(1e-8) * self.unit_basis().to(flat.dtype)
        return [old_qem(flat, basis, self.codes, 3 if calibrate else 5)]

    def quantize(self, x):
        self.check_channels(x)
        flat = self.rows(x.detach())
        basis = self.basis.view(-1, self.codes.shape[1])
        index, values, sorted_codes = old_encode(flat.to(basis.dtype), basis, self.codes)
        q = torch.gather(values, 1, index).view_as(x).to(x.dtype)
        if self.training and not self.calibrating:
            with torch.no_grad():
                sample, sample_index = (flat, index) if self.per_channel else (old_strided(flat), old_strided(index))
                fitted = old_fit_basis(sample.to(basis.dtype), basis, self.codes, sample_index, sorted_codes)
                self.basis.lerp_(fitted.view_as(self.basis), 1 - _MOMENTUM)
        if self.role == "weight":
            return replace_ste(x, q)
        return replace_ste(x, q, values[0, 0], values[0, -1])


# ---- cases ---------------------------------------------------------------------------------------
CASES = [
    # (role, bits, levels, per_channel, shape): large activations exercise the strided QEM sample
    ("act", 4, 0, False, (4, 64, 40, 40)),
    ("act", 2, 0, False, (2, 16, 48, 48)),
    ("act", 3, 0, False, (3, 5, 7, 11)),
    ("weight", 4, 0, False, (64, 32, 3, 3)),
    ("weight", 2, 0, True, (16, 8, 3, 3)),
    ("weight", 4, 0, True, (32, 3, 7, 7)),
    ("weight", 2, 3, False, (32, 16, 3, 3)),
    ("weight", 2, 3, True, (8, 4, 3, 3)),
    ("act", 8, 0, False, (2, 8, 20, 20)),  # 256 levels: the searchsorted path
]


def _input(role, shape, step, seed):
    g = torch.Generator().manual_seed(seed * 100 + step)
    x = torch.randn(shape, generator=g) * (1 + 0.3 * step)
    if role == "act":
        x = torch.relu(x + 0.2)
        x.view(-1)[:: 97] = 0.0  # exact zeros and ties, as after a ReLU
    return x


def _pair(role, bits, levels, per_channel, shape):
    kwargs = dict(levels=levels, per_channel=per_channel, num_channels=shape[0] if per_channel else 1)
    new = build_quantizer("lqnet", role, bits, **kwargs)
    old = OldLQNet(role, bits, **kwargs)
    old.load_state_dict(new.state_dict())
    return new, old


def _run_and_compare(new, old, role, shape, seed):
    new.train(), old.train()
    for step in range(4):
        x = _input(role, shape, step, seed)
        grad = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 7 * step))
        xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
        outs = [q(xi) for q, xi in zip((new, old), xs)]
        for out, xi in zip(outs, xs):
            out.backward(grad)
        assert torch.equal(outs[0], outs[1]), f"output differs at step {step}"
        assert torch.equal(xs[0].grad, xs[1].grad), f"input gradient differs at step {step}"
        assert torch.equal(new.basis, old.basis), f"basis differs after step {step}"
    new.eval(), old.eval()
    x = _input(role, shape, 9, seed)
    assert torch.equal(new(x), old(x))
    for q in (new, old):
        set_calibration(q, True)
    with torch.no_grad():
        for step in (10, 11):
            x = _input(role, shape, step, seed)
            assert torch.equal(new(x), old(x))
    for q in (new, old):
        set_calibration(q, False)
    assert torch.equal(new.basis, old.basis)


@pytest.mark.parametrize("native", [True, False], ids=["kernel", "torch"])
@pytest.mark.parametrize("role,bits,levels,per_channel,shape", CASES)
def test_lqnet_matches_the_replaced_implementation(monkeypatch, native, role, bits, levels, per_channel, shape):
    if native and not lqnet_module.native_available():
        pytest.skip("no C compiler: the kernel path is not built here")
    monkeypatch.setattr(lqnet_module, "USE_NATIVE", native)
    torch.manual_seed(0)
    new, old = _pair(role, bits, levels, per_channel, shape)
    _run_and_compare(new, old, role, shape, seed=len(shape) + bits)


def test_old_helpers_equal_the_kept_helpers():
    """encode / fit_basis / qem / make_codes keep their numbers (used by tests and calibration)."""
    torch.manual_seed(5)
    for role, bits in (("weight", 3), ("act", 2)):
        codes = lqnet_module.make_codes(role, 2**bits, bits)
        assert torch.equal(codes, old_make_codes(role, 2**bits, bits))
        x = torch.randn(3, 5000)
        basis = torch.rand(3, bits) + 0.1
        for a, b in zip(lqnet_module.encode(x, basis, codes), old_encode(x, basis, codes)):
            assert torch.equal(a, b)
        assert torch.equal(lqnet_module.qem(x, basis, codes, 3), old_qem(x, basis, codes, 3))


def test_without_a_compiler_the_torch_path_runs(tmp_path):
    """No C compiler (CC=false) and an empty kernel cache: one warning, same quantizer behaviour."""
    import os
    import subprocess
    import sys

    code = ("import torch, logging; logging.basicConfig()\n"
            "from quant_det.quantizers import build_quantizer\n"
            "from quant_det.quantizers.lqnet import native_available\n"
            "q = build_quantizer('lqnet', 'act', 2).train()\n"
            "y = q(torch.rand(2, 3, 8, 8))\n"
            "print(native_available(), y.unique().numel() <= 4)\n")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, CC="false", QUANT_DET_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
    assert "LQ-Net kernel not built" in out.stderr
