"""Straight-through estimators (STE, Bengio et al. 2013, arXiv:1308.3432) shared by the quantizers.

Round has zero gradient almost everywhere; an STE uses the identity (or the clamp's 0/1 mask) as
its backward instead. These Functions save the input rather than a bool mask: on CPU, masked
gradients through `hardtanh_backward` are one fused kernel while bool masks cost an extra
allocation, and the input of an activation quantizer is usually kept alive anyway (by the
preceding ReLU/BN), so saving it costs no memory.
"""
import torch
from torch.autograd import Function


def pass_inside(grad, x, lo, hi):
    """Return `grad` where lo < x < hi and 0 elsewhere (the STE gradient of clamp(x, lo, hi)).

    `lo`/`hi` are Python numbers or tensors broadcastable to `x`. Scalars on CPU use the fused
    `aten.hardtanh_backward`; other cases use `torch.where` (no host-device sync).
    """
    scalar_bounds = all(not torch.is_tensor(b) or b.numel() == 1 for b in (lo, hi))
    if x.device.type == "cpu" and scalar_bounds and grad.dtype == x.dtype:
        return torch.ops.aten.hardtanh_backward(grad, x, float(lo), float(hi))
    return torch.where((x > lo) & (x < hi), grad, torch.zeros((), dtype=grad.dtype, device=grad.device))


class RoundSTE(Function):
    """y = round(x) (half to even); dy/dx := 1."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_ste(x):
    """round(x) with identity gradient."""
    return RoundSTE.apply(x)


class UnitQuantizeSTE(Function):
    """DoReFa's quantize_k on [0, 1]: y = round(n * clamp(x, 0, 1)) / n; dy/dx := 1 if 0 < x < 1 else 0."""

    @staticmethod
    def forward(ctx, x, n):
        ctx.save_for_backward(x)
        return x.clamp(0, 1).mul_(n).round_().div_(n)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return pass_inside(grad, x, 0.0, 1.0), None


def unit_quantize_ste(x, n):
    """round(n * clamp(x, 0, 1)) / n with the clamp's straight-through gradient; n = levels - 1."""
    return UnitQuantizeSTE.apply(x, float(n))


class ReplaceSTE(Function):
    """Forward returns the precomputed `q`; backward passes grad to `x` (zeroed outside (lo, hi) if given)."""

    @staticmethod
    def forward(ctx, x, q, lo, hi):
        ctx.bounds = (lo, hi) if lo is not None else None
        if ctx.bounds is not None:
            ctx.save_for_backward(x)
        return q

    @staticmethod
    def backward(ctx, grad):
        if ctx.bounds is None:
            return grad, None, None, None
        (x,) = ctx.saved_tensors
        return pass_inside(grad, x, *ctx.bounds), None, None, None


def replace_ste(x, q, lo=None, hi=None):
    """Output `q` (computed without gradient) with gradient d/dx := 1 (on lo < x < hi if bounds given).

    Example: `replace_ste(w, torch.sign(w).detach() * alpha)`.
    """
    return ReplaceSTE.apply(x, q.detach(), lo, hi)
