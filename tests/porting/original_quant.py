"""Reference forwards of the original model-quantization project's quantizers, for the tests.

Re-derived from reading ziplab/QTool `models/quant.py` (class `quantization`, forward for
method "dorefa" with keywords lsq / native / pact, and `lq_net_init`), `models/dorefa.py`
(`LSQ`: round(x * n) / n; `qfn`: round(x * (L-1)/clip) / ((L-1)/clip)) and `models/alqnet.py`
(`LqNet_wt`/`LqNet_fm`: sorted levels, thresholds, "x > threshold -> next level"). Only the
forward values matter here: gradient scaling and the straight-through backward are left out.
Weights are grouped like theirs: `reshape(G, -1)` of the [C_out, C_in, kh, kw] tensor.
"""
import torch


def _grouped(x, values):
    """x reshaped to [G, -1] and `values` (any shape with G elements) to [G, 1]."""
    g = values.numel()
    return x.reshape(g, -1), values.reshape(g, 1)


def lsq(x, clip_val, levels, half_range, native=False):
    """Their LSQ: clip range |clip_val| per group; unsigned (half_range), offset-signed, or native."""
    xg, c = _grouped(x, clip_val.abs())
    n = levels - 1
    if half_range:
        y = torch.round(torch.clamp(xg / c, 0, 1) * n) / n * c
    elif native:
        h = levels // 2
        y = torch.clamp(torch.round(xg / c * h), -h, levels - h - 1) / h * c
    else:
        unit = (torch.clamp(xg / c, -1, 1) + 1.0) / 2.0
        y = (torch.round(unit * n) / n * 2.0 - 1.0) * c
    return y.reshape(x.shape)


def pact(x, clip_val, levels):
    """Their PACT activation: clamp to [0, clip_val], then DoReFa's qfn with clip_val."""
    y = torch.clamp(x, min=0)
    y = torch.where(y < clip_val, y, clip_val)
    scale = (levels - 1) / clip_val
    return torch.round(y * scale) / scale


def lqnet_codes(levels, bits, half_range):
    """Their codec_vector [L, K]: row i holds the bits of i, least significant first; 0 -> -1
    unless half_range. (Their 3-level setting has bits = 1: rows -1, +1, -1.)"""
    rows = []
    for i in range(levels):
        row = []
        for _ in range(bits):
            bit = float(i % 2)
            row.append(bit if bit or half_range else -1.0)
            i //= 2
        rows.append(row)
    return torch.tensor(rows)


def lqnet_thresholds(levels, half_range, scale=0.5):
    """Their thrs_multiplier [L-1, L]: threshold i mixes sorted levels i-1 and i."""
    m = torch.zeros(levels - 1, levels)
    for i in range(1, levels):
        if half_range or i > levels / 2:
            m[i - 1, i - 1], m[i - 1, i] = scale, 1 - scale
        elif i < levels / 2:
            m[i - 1, i - 1], m[i - 1, i] = 1 - scale, scale
        else:
            m[i - 1, i - 1] = m[i - 1, i] = 0.5
    return m


def lqnet(x, basis, codec_vector, thrs_multiplier):
    """Their LQ-Net forward: basis [K, G]; per group, the level above the last passed threshold."""
    levels, _ = torch.sort(codec_vector @ basis, dim=0)  # [L, G]
    thresholds = thrs_multiplier @ levels  # [L-1, G]
    xg = x.reshape(basis.shape[1], -1)
    y = levels[0][:, None].expand_as(xg)
    for i in range(levels.shape[0] - 1):
        y = torch.where(xg > thresholds[i][:, None], levels[i + 1][:, None].expand_as(xg), y)
    return y.reshape(x.shape)
