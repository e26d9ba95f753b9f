"""LQ-Net: learned quantization basis (Zhang et al. 2018, ECCV, "LQ-Nets: Learned Quantization for
Highly Accurate and Compact Deep Neural Networks", arXiv:1807.10029).

    levels   q_l = <v, b_l>,  v in R^K (the basis, K = bits), codes b_l in {-1,+1}^K (weights) or
             {0,1}^K (activations); ternary weights (levels=3): K = 1, b_l in {-1, 0, +1}
    encode   x -> the nearest level (thresholds at midpoints of the sorted levels)     (eq. 6)
             (training/eval forward on float32 CPU tensors: one pass of the C kernel in
             lqnet_kernel.c, built on first use; otherwise torch.searchsorted + gather; the two
             give the same numbers, see tests/quantizers/test_lqnet_pinned.py)
    backward straight-through: dx_q/dx = 1 (weights), 1 on min(q) < x < max(q) (activations)
    QEM fit  v* = (B^T B)^-1 B^T x, B = codes of the encoded x                         (eq. 8)
             (computed from per-level counts n_l and sums S_l: B^T B = sum n_l b_l b_l^T,
             B^T x = sum S_l b_l; a 1e-6 ridge towards the old v keeps unused directions)
    training v <- 0.9 v + 0.1 v* after every training forward (moving average, sec. 3.3); v is a
             buffer, not a Parameter, as in the paper.

Per-channel (weights) keeps one basis per output channel. Init (first training batch) starts from
the uniform grid v_k = s * 2^k (signed codes: s/2 * 2^k; ternary: s) with s = 2 mean|x| / sqrt(L-1)
and runs 5 QEM iterations; calibration runs 3 QEM iterations per batch (on at most 65536 strided
samples for per-tensor activations) and averages v over batches. Per-tensor quantizers fit on at
most 65536 evenly strided samples (also in training), which keeps the refit cheap on large maps.
"""
import itertools
import math

import torch

from .native import library, lqnet_encode
from .registry import LearnedRangeQuantizer, invalid, register_quantizer
from .ste import replace_ste

_SAMPLES = 1 << 16
_MOMENTUM = 0.9
_NATIVE_MAX_LEVELS = 32  # the kernel's select chain is O(levels); searchsorted is O(log levels)
USE_NATIVE = True  # False: always the torch path (tests compare the two)


def make_codes(role, levels, bits):
    """Code matrix [L, K]: all {-1,+1}^K (weights) / {0,1}^K (acts), or [[-1], [0], [1]] for ternary."""
    if levels == 3:
        return torch.tensor([[-1.0], [0.0], [1.0]])
    digits = (-1.0, 1.0) if role == "weight" else (0.0, 1.0)
    return torch.tensor(list(itertools.product(digits, repeat=bits)))


def encode(flat, basis, codes):
    """Nearest level of every row of `flat` [O, M] under basis [O, K].

    Returns (index into the sorted levels [O, M], sorted levels [O, L], codes in that order [O, L, K]).
    """
    values, order = (basis @ codes.t()).sort(dim=1)
    thresholds = (values[:, 1:] + values[:, :-1]) / 2
    index = torch.searchsorted(thresholds.contiguous(), flat.contiguous())
    return index, values, codes[order]


def level_stats(flat, index, num_levels):
    """Per-row (count [O, L] int64, sum [O, L] float64) of `flat` [O, M] over the level `index`."""
    rows = index.shape[0]
    offset = index + torch.arange(rows, device=index.device)[:, None] * num_levels
    count = torch.bincount(offset.reshape(-1), minlength=rows * num_levels).view(rows, num_levels)
    total = torch.bincount(offset.reshape(-1), flat.reshape(-1).double(), minlength=rows * num_levels)
    return count, total.view(rows, num_levels)


def solve_basis(count, total, basis, sorted_codes):
    """v* = (B^T B + r I)^-1 (B^T x + r v) from the per-level counts n_l and sums S_l (per row)."""
    c = sorted_codes.double()
    gram = torch.einsum("ol,olk,olj->okj", count.double(), c, c)
    rhs = torch.einsum("ol,olk->ok", total, c)
    ridge = 1e-6 * (gram.diagonal(dim1=1, dim2=2).mean(1) + 1.0)
    gram = gram + ridge[:, None, None] * torch.eye(c.shape[2], dtype=gram.dtype, device=gram.device)
    rhs = rhs + ridge[:, None] * basis.double()
    return torch.linalg.solve(gram, rhs).to(basis.dtype)


def fit_basis(flat, basis, codes, index, sorted_codes):
    """Least-squares basis v* = (B^T B + r I)^-1 (B^T x + r v) for the encoding `index` (per row)."""
    return solve_basis(*level_stats(flat, index, codes.shape[0]), basis, sorted_codes)


def sample_stride(columns, limit=_SAMPLES):
    """k of `strided`: M // limit when M > limit, else 1."""
    return columns // limit if columns > limit else 1


def strided(t, limit=_SAMPLES):
    """Every k-th column of `t` [O, M], k = M // limit, so fewer than 2 * limit columns remain."""
    return t[:, :: sample_stride(t.shape[1], limit)]


def native_available():
    """True when the C encoding kernel is built and loaded on this machine."""
    return library() is not None


def nearest_levels(flat, values, stride=0):
    """Nearest of the sorted `values` [O, L] for every element of `flat` [O, M].

    Returns (q [O, M], stats): with stride > 0, stats = `level_stats` of the columns ::stride (the
    QEM sample), else None. Same numbers on both paths (C kernel, or searchsorted + gather).
    """
    thresholds = (values[:, 1:] + values[:, :-1]) / 2
    if (USE_NATIVE and flat.device.type == "cpu" and flat.dtype == torch.float32 == values.dtype
            and values.shape[1] <= _NATIVE_MAX_LEVELS and library() is not None):
        return lqnet_encode(flat, thresholds, values, stride)
    index = torch.searchsorted(thresholds.contiguous(), flat.contiguous())
    q = torch.gather(values, 1, index)
    if stride == 0:
        return q, None
    return q, level_stats(flat[:, ::stride], index[:, ::stride], values.shape[1])


def qem(flat, basis, codes, iterations):
    """Run `iterations` rounds of (encode, least-squares fit); returns the new basis [O, K]."""
    for _ in range(iterations):
        index, _, sorted_codes = encode(flat, basis, codes)
        basis = fit_basis(flat, basis, codes, index, sorted_codes)
    return basis


@register_quantizer("lqnet")
class LQNetQuantizer(LearnedRangeQuantizer):
    """LQ-Net with basis buffer `basis` ([K], or [num_channels, K] per channel); levels 2**bits, or 3
    (ternary) for weights."""

    def __init__(self, role, bits, levels=0, per_channel=False, num_channels=1):
        super().__init__(role, bits, levels, per_channel, num_channels)
        allowed = [0, 2**bits] + ([3] if role == "weight" and bits >= 2 else [])
        if levels not in allowed:
            raise invalid("levels", levels, allowed, f"lqnet {role} with bits={bits}")
        self.register_buffer("codes", make_codes(role, self.levels, bits), persistent=False)
        unit = self.unit_basis()
        self.register_buffer("basis", unit.repeat(self.num_channels, 1) if per_channel else unit)

    def unit_basis(self):
        """Uniform-grid basis with step 1: [1] (ternary), [1/2, 1, 2, ..] (weights), [1, 2, 4, ..] (acts)."""
        if self.levels == 3:
            return torch.ones(1, device=self.codes.device)
        unit = 2.0 ** torch.arange(self.codes.shape[1], dtype=torch.float32, device=self.codes.device)
        return unit / 2 if self.role == "weight" else unit

    def range_tensors(self):
        return [self.basis]

    def rows(self, x):
        """x as [O, M] (per channel) or [1, M] (per tensor)."""
        return x.flatten(1) if self.per_channel else x.reshape(1, -1)

    def estimate(self, x, calibrate):
        self.check_channels(x)
        flat = self.rows(x).float()
        if not self.per_channel:
            flat = strided(flat)
        if calibrate and self.is_initialized():
            return [qem(flat, self.basis.view(-1, self.codes.shape[1]), self.codes, 3)]
        scale = 2 * flat.abs().mean(1, keepdim=True) / math.sqrt(self.levels - 1)
        basis = scale.clamp_min(1e-8) * self.unit_basis().to(flat.dtype)
        return [qem(flat, basis, self.codes, 3 if calibrate else 5)]

    def passthrough(self, x):
        """`x` itself (all zero): `quantize` in training would fit the basis to it, and a 2-bit
        weight grid (+-b1 +-b2) has no 0. The basis is a buffer, so no Parameter leaves the graph."""
        return x

    def quantize(self, x):
        self.check_channels(x)
        flat = self.rows(x.detach()).to(self.basis.dtype)
        basis = self.basis.view(-1, self.codes.shape[1])
        values, order = (basis @ self.codes.t()).sort(dim=1)
        fit = self.training and not self.calibrating
        stride = (1 if self.per_channel else sample_stride(flat.shape[1])) if fit else 0
        q, stats = nearest_levels(flat, values, stride)
        q = q.view_as(x).to(x.dtype)
        if fit:
            with torch.no_grad():
                fitted = solve_basis(*stats, basis, self.codes[order])
                self.basis.lerp_(fitted.view_as(self.basis), 1 - _MOMENTUM)
        if self.role == "weight":
            return replace_ste(x, q)
        return replace_ste(x, q, values[0, 0], values[0, -1])
