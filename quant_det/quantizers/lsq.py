"""LSQ: Learned Step Size Quantization (Esser et al. 2020, ICLR, arXiv:1902.08153).

    v_hat = round(clamp(v / s, -Qn, Qp)) * s
    dv_hat/dv = 1 if -Qn < v/s < Qp else 0                                   (paper eq. 5, STE)
    dv_hat/ds = -v/s + round(v/s) if -Qn < v/s < Qp; -Qn if v/s <= -Qn; Qp if v/s >= Qp   (eq. 3)
    grad(s) is multiplied by g = 1 / sqrt(N * Qp)                             (sec. 2.2)
    initial s = 2 * mean|v| / sqrt(Qp)                                        (sec. 2.1)

Grid: signed (weights, and activations whose first batch has negatives) Qn = L/2, Qp = L/2 - 1 for
even L (= 2^(b-1), 2^(b-1)-1), Qn = Qp = (L-1)/2 for odd L; unsigned (post-ReLU) Qn = 0, Qp = L-1.
N is the number of weights per step (all, or per output channel) or, for activations, the number
of features per example (numel / batch size). Calibration replaces the init rule by the step that
minimizes ||v - v_hat||^2 over a grid of 64 clipping ratios (`mse_step`); so does the first
training batch when `init_rule` is "mse" (MODEL.QUANTIZATION.LSQ_INIT).

Backward uses the identity  sum(g * dv_hat/ds) = (<g, v_hat> - <g_v, v>) / s,  where g_v is the
input gradient above, so it needs no per-element temporary besides g_v.
"""
import math

import torch
from torch import nn
from torch.autograd import Function

from .mse import mse_step
from .registry import LearnedRangeQuantizer, invalid, register_quantizer, sync_mean
from .ste import pass_inside

_EPS = 1e-8


def signed_bounds(levels):
    """(Qn, Qp) of the signed grid with `levels` values: even L -> (L/2, L/2 - 1), odd L -> ((L-1)/2,) * 2."""
    return (levels // 2, levels // 2 - 1) if levels % 2 == 0 else ((levels - 1) // 2,) * 2


class LSQRound(Function):
    """v_hat = round(clamp(v/s, -qn, qp)) * s with the LSQ gradients (s: 0-d, or [O,1,..] per channel)."""

    @staticmethod
    def forward(ctx, x, step, qn, qp, grad_scale):
        s = step.clamp_min(_EPS)
        y = (x / s).clamp_(-qn, qp).round_().mul_(s)
        ctx.save_for_backward(x, y, s)
        ctx.qn, ctx.qp, ctx.grad_scale = qn, qp, grad_scale
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y, s = ctx.saved_tensors
        grad_x = pass_inside(grad, x, -ctx.qn * s, ctx.qp * s)
        grad_s = None
        if ctx.needs_input_grad[1]:
            if s.dim() == 0:
                g, gx = grad.reshape(-1), grad_x.reshape(-1)
                inner = torch.dot(g, y.reshape(-1)) - torch.dot(gx, x.reshape(-1))
            else:
                inner = (grad * y).flatten(1).sum(1) - (grad_x * x).flatten(1).sum(1)
            grad_s = (inner / s.reshape(-1 if s.dim() else ())).reshape(s.shape) * ctx.grad_scale
            grad_s = grad_s.to(s.dtype)
        return grad_x, grad_s, None, None, None


@register_quantizer("lsq")
class LSQQuantizer(LearnedRangeQuantizer):
    """LSQ with a learned step `step` (Parameter: 0-d, or [num_channels] per channel) and a `signed`
    buffer (1 for weights; for activations set from the first data: 1 if it has negatives).

    `init_rule` ("paper" | "mse") picks the initial step from the first training batch.
    """

    def __init__(self, role, bits, levels=0, per_channel=False, num_channels=1):
        super().__init__(role, bits, levels, per_channel, num_channels)
        if role == "weight" and self.levels < 3:
            raise invalid("levels", self.levels, "3..256 (bits >= 2)", "lsq weights need Qp >= 1")
        shape = (self.num_channels,) if self.per_channel else ()
        self.step = nn.Parameter(torch.ones(shape))
        self.register_buffer("signed", torch.tensor(int(role == "weight"), dtype=torch.uint8))
        self._signed = role == "weight"
        self.init_rule = "paper"

    def signedness(self):
        return "signed" if self.role == "weight" else "from data"

    def bounds(self):
        """(Qn, Qp) for the current grid."""
        return signed_bounds(self.levels) if self._signed else (0, self.levels - 1)

    def range_tensors(self):
        return [self.step]

    def estimate(self, x, calibrate):
        self.check_channels(x)
        if self.role == "act" and not self.is_initialized():
            negative = sync_mean((x.min() < 0).float())
            self.signed.fill_(int(negative.item() > 0))
            self._signed = bool(self.signed)
        qn, qp = self.bounds()
        if calibrate or self.init_rule == "mse":
            return [mse_step(x, qn, qp, self.per_channel)]
        mean_abs = x.abs().flatten(1).mean(1) if self.per_channel else x.abs().mean()
        return [(2 * mean_abs / math.sqrt(max(qp, 1))).clamp_min(_EPS)]

    def quantize(self, x):
        self.check_channels(x)
        qn, qp = self.bounds()
        per_step = x.numel() / (self.num_channels if self.role == "weight" else max(x.shape[0], 1))
        grad_scale = 1.0 / math.sqrt(per_step * max(qp, 1))
        step = self.channel_view(self.step, x) if self.per_channel else self.step
        return LSQRound.apply(x, step, qn, qp, grad_scale)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._signed = bool(self.signed)
