"""DoReFa-Net quantizers (Zhou et al. 2016, "DoReFa-Net: Training Low Bitwidth Convolutional Neural
Networks with Low Bitwidth Gradients", arXiv:1606.06160), with n = L - 1 levels steps (n = 2^k - 1
when levels is 0):

    quantize_k(r) = round(n * r) / n,  r in [0, 1], gradient 1 (straight-through)

    activations:      x_q = quantize_k(clamp(x, 0, 1)),  dx_q/dx = 1 on 0 < x < 1, else 0
    weights, L > 2:   w_q = 2 * quantize_k(tanh(w) / (2 * max|tanh(w)|) + 1/2) - 1      (paper eq. 9)
                      (uniform=True drops the tanh: w / (2 * max|w|) + 1/2)
    weights, L = 2:   w_q = sign(w) * mean|w|,  dw_q/dw = 1, mean|w| treated as a constant (sec. 2.4)

The max/mean are per tensor, or per output channel (dim 0) with per_channel=True. sign(0) := +1 so
binary weights take exactly two values.

The L > 2 weight transform is one autograd Function (`DoReFaWeight`) with the backward written
out: it saves only tanh(w) and the max, where autograd through the dozen elementwise ops above
kept several weight-sized temporaries and ran a kernel per op (issue 14: DoReFa/PACT QAT steps
were 1.5-1.7x FP32 on RetinaNet-R18). Outputs are bit-identical to the op-by-op formula (same
operations in the same order); gradients, including the term through the max, equal autograd's
up to float rounding, except that per tensor a max value repeated at several positions takes the
max's gradient at one of them (see `DoReFaWeight`).
"""
import torch
from torch.autograd import Function

from .registry import Quantizer, register_quantizer
from .ste import replace_ste, unit_quantize_ste

_TINY = 1e-12


class DoReFaWeight(Function):
    """w_q = 2 * round(n * (t / (2 m) + 1/2)) / n - 1,  t = tanh(w) (or w), m = max|t| (per tensor
    or per dim-0 slice, clamped to >= _TINY); round has identity gradient, the max does not.

    Backward, with g the output gradient:  dL/dt = g / m + [t_j is a maximum of its slice] *
    sign(t_j) * (-<g, t>_slice / m^2) / (number of maxima in the slice)  (autograd's amax rule:
    ties share the gradient), then dL/dw = dL/dt * (1 - t^2) for the tanh variant. Per tensor,
    the maxima are taken as the first position of max(t) and of min(t) (one or both, when
    max(t) = -min(t)): a value repeated at several positions gets the max's gradient at one of
    them instead of shared (finding every tie cost 4% of a RetinaNet QAT step).
    """

    @staticmethod
    def forward(ctx, w, n, per_channel, use_tanh):
        t = torch.tanh(w) if use_tanh else w
        if per_channel:
            m = t.detach().abs().flatten(1).amax(1).view((-1,) + (1,) * (t.dim() - 1))
            ctx.extremes = None
        else:  # the largest and smallest element with their positions, for the backward
            hi, i_hi = t.detach().reshape(-1).max(0)
            lo, i_lo = t.detach().reshape(-1).min(0)
            m = torch.maximum(-lo, hi)
            ctx.extremes = (i_hi, i_lo, hi >= -lo, -lo >= hi)
        raw_max = m
        m = m.clamp_min(_TINY)
        out = t.div(2 * m).add_(0.5).mul_(n).round_().div_(n).mul_(2).sub_(1)
        ctx.save_for_backward(t, m, raw_max)
        ctx.per_channel, ctx.use_tanh = per_channel, use_tanh
        return out

    @staticmethod
    def backward(ctx, g):
        t, m, raw_max = ctx.saved_tensors
        grad_t = (g / m).contiguous()  # indexed in logical order below (channels_last weights too)
        # the max's gradient (zero where the clamp to _TINY was active, as autograd's clamp_min)
        if ctx.per_channel:
            inner = (g * t).flatten(1).sum(1)
            d_max = torch.where(raw_max.flatten() > _TINY, -inner / m.flatten().square(), 0.0)
            at_max = t.abs().flatten(1) == raw_max.flatten(1)
            rows, cols = at_max.nonzero(as_tuple=True)
            share = (d_max / at_max.sum(1).clamp_min(1))[rows]
            flat = t.flatten(1)
            grad_t.view(flat.shape).index_put_((rows, cols), torch.sign(flat[rows, cols]) * share,
                                               accumulate=True)
        else:
            d_max = -torch.dot(g.reshape(-1), t.reshape(-1)) / m.square()
            d_max = torch.where(raw_max > _TINY, d_max, 0.0)
            # |t| is largest at the max (+) and/or at the min (-), which share it when they tie
            i_hi, i_lo, hi_wins, lo_wins = ctx.extremes
            share = d_max / (hi_wins.to(d_max.dtype) + lo_wins.to(d_max.dtype))
            idx = torch.stack([i_hi, i_lo])
            grad_t.view(-1).index_add_(0, idx, torch.stack([share * hi_wins, -share * lo_wins]))
        if ctx.use_tanh:
            grad_t = torch.ops.aten.tanh_backward(grad_t, t)
        return grad_t, None, None, None


@register_quantizer("dorefa")
class DoReFaQuantizer(Quantizer):
    """DoReFa weights ("weight") or activations ("act"); see the module docstring for the formulas."""

    def __init__(self, role, bits, levels=0, per_channel=False, num_channels=1, uniform=False):
        super().__init__(role, bits, levels, per_channel, num_channels)
        self.uniform = bool(uniform)

    def extra_repr(self):
        return super().extra_repr() + (", uniform=True" if self.uniform else "")

    def forward(self, x):
        if self.role == "act":
            return unit_quantize_ste(x, self.levels - 1)
        if self.levels == 2:
            scale = self._reduce(x.detach().abs(), "mean")
            return replace_ste(x, torch.where(x >= 0, scale, -scale))
        return DoReFaWeight.apply(x, float(self.levels - 1), self.per_channel, not self.uniform)

    def _reduce(self, t, how):
        """mean/amax of `t` over the whole tensor, or per dim-0 slice (broadcastable) if per_channel."""
        if not self.per_channel:
            return t.mean() if how == "mean" else t.amax()
        flat = t.flatten(1)
        out = flat.mean(1) if how == "mean" else flat.amax(1)
        return self.channel_view(out, t)
