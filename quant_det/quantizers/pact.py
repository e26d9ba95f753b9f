"""PACT: Parameterized Clipping Activation (Choi et al. 2018, arXiv:1805.06085), activations only.

    y   = clamp(x, 0, alpha)                                   (paper eq. 1)
    y_q = round(y * n / alpha) * alpha / n,   n = L - 1        (eq. 2)
    dy_q/dx     = 1 if 0 < x < alpha else 0                    (STE through round)
    dy_q/dalpha = 1 if x >= alpha else 0                        (eq. 3, STE through round)

alpha is a Parameter (10 until data is seen, as in the paper). Data-driven init (first training
batch) and calibration set alpha = n * s, s the MSE-optimal step on the unsigned grid
(`mse.mse_step`); calibration averages it over batches.

Backward uses  sum_{x >= alpha} g = (<g, y_q> - <g_x, y_q>) / alpha,  g_x the input gradient, which
holds because y_q = alpha (computed as n * (alpha/n)) where x >= alpha and y_q = 0 where x <= 0.
"""
import torch
from torch import nn
from torch.autograd import Function

from .mse import mse_step
from .registry import LearnedRangeQuantizer, register_quantizer
from .ste import pass_inside

_EPS = 1e-8


class PACTRound(Function):
    """y_q = round(clamp(x / (alpha/n), 0, n)) * alpha/n with the PACT gradients (alpha: 0-d)."""

    @staticmethod
    def forward(ctx, x, alpha, n):
        a = alpha.clamp_min(_EPS)
        s = a / n
        y = (x / s).clamp_(0, n).round_().mul_(s)
        ctx.save_for_backward(x, y, a, s * n)  # s * n: the output value where x >= alpha
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y, a, top = ctx.saved_tensors
        grad_x = pass_inside(grad, x, 0.0, a)
        grad_a = None
        if ctx.needs_input_grad[1]:
            g, gx, yq = grad.reshape(-1), grad_x.reshape(-1), y.reshape(-1)
            grad_a = ((torch.dot(g, yq) - torch.dot(gx, yq)) / top).to(a.dtype)
        return grad_x, grad_a, None


@register_quantizer("pact")
class PACTQuantizer(LearnedRangeQuantizer):
    """PACT with learned clip `alpha` (0-d Parameter); see the module docstring."""

    ROLES = ("act",)

    def __init__(self, role, bits, levels=0, per_channel=False, num_channels=1):
        super().__init__(role, bits, levels, per_channel, num_channels)
        self.alpha = nn.Parameter(torch.tensor(10.0))

    def range_tensors(self):
        return [self.alpha]

    def estimate(self, x, calibrate):
        return [mse_step(x, 0, self.levels - 1) * (self.levels - 1)]

    def quantize(self, x):
        return PACTRound.apply(x, self.alpha, float(self.levels - 1))
