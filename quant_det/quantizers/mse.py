"""`mse_step`: the step of a uniform grid that minimizes the quantization error of a tensor.

The data-driven range rule shared by LSQ (calibration, and LSQ_INIT "mse") and PACT (alpha = n * s).
A file of its own so that neither method imports the other (the registry lists methods in the
order `quant_det/quantizers/__init__.py` imports them).
"""
import torch

_EPS = 1e-8
_SEARCH_SAMPLES = 1 << 16


def mse_step(x, qn, qp, per_channel=False, num=64):
    """Step s minimizing sum((x - round(clamp(x/s, -qn, qp)) * s)^2) over s = r * max|x| / max(qn, qp),
    r in {1/num, ..., 1}. Returns a 0-d tensor, or [O] per dim-0 slice if per_channel.

    Per-tensor search uses every k-th element of x, k = numel // 65536 (fewer than 131072 samples).
    """
    flat = x.flatten(1) if per_channel else x.reshape(1, -1)
    if not per_channel and flat.shape[1] > _SEARCH_SAMPLES:
        flat = flat[:, :: flat.shape[1] // _SEARCH_SAMPLES]
    flat = flat.float()
    top = flat.abs().amax(1).clamp_min(_EPS) / max(qn, qp)
    best_err = torch.full_like(top, float("inf"))
    best = top.clone()
    for r in torch.arange(1, num + 1, dtype=flat.dtype, device=flat.device) / num:
        s = (top * r)[:, None]
        err = (torch.round(torch.clamp(flat / s, -qn, qp)) * s - flat).pow_(2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s[:, 0], best)
    return best if per_channel else best[0]
