"""`prepare_export(model)`: a copy of a (quantized) detectron2 model in export form, plus a log.

Every Conv2d/Linear (QuantConv2d/QuantLinear or float) becomes an `ExportLayer`; its BatchNorm
is folded into it:

  * the BN inside a detectron2 `Conv2d` (`conv.norm`): ResNet, FPN-BN, P6/P7;
  * a `CycleBatchNormList` (one BN per FPN level, shared affine: "Head-BN") right after a head
    conv in an `nn.Sequential`: the conv becomes one ExportLayer per level (`CycleExportLayer`)
    sharing the integer weight codes, each with its own folded scale and bias.

Folding with BN gain k = gamma / sqrt(var + eps) (per output channel) and shift beta - mean * k:
  * uniform integer weights (codes q, scale s): the codes stay and the scale becomes s * k per
    output channel (a per-tensor scale becomes per-channel). This is exact:
    BN(conv(x, s q)) = conv(x, (s k) q) + shift, with the same integers q, so the folded layer
    computes the same quantized result (up to float32 rounding of s * k). k < 0 gives a negative
    DequantizeLinear scale (onnxruntime accepts it, also in its QLinearConv fusion).
    `positive_scales=True` (for runtimes that reject negative scales) negates the codes of
    channels with k < 0 instead and keeps BN when a negated code leaves its integer container
    (e.g. -8 in INT4).
  * float weights: W * k.
  * LQ-Net level weights: refused, BN kept (the learned level set would become per channel).
  * GroupNorm and other norms: kept (nothing to fold).
The folded bias is quantized to INT32 with scale act_scale * weight_scale when the input and the
weight are both uniform 8-bit grids (`int_bias`), as QDQ runtimes expect for integer kernels;
otherwise it stays float (see `ExportLayer`).
"""
import copy
import logging

import torch
from detectron2.layers import CycleBatchNormList, FrozenBatchNorm2d
from torch import nn

from ..layers import QuantConv2d, QuantLinear
from .modules import CycleExportLayer, ExportLayer
from .specs import (RANGES, LevelWeight, NotExportable, UniformWeight, act_spec, container,
                    weight_spec)

logger = logging.getLogger(__name__)
LOG_COLUMNS = ["layer", "type", "activation", "weight", "BN", "bias"]


def bn_factors(norm):
    """(k, shift) of an eval-mode BatchNorm2d / FrozenBatchNorm2d: norm(y) = y * k + shift."""
    if isinstance(norm, FrozenBatchNorm2d) or (
            isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.track_running_stats):
        mean, var = norm.running_mean.double(), norm.running_var.double()
        k = torch.rsqrt(var + norm.eps)
        w = norm.weight.detach().double() if getattr(norm, "weight", None) is not None else None
        b = norm.bias.detach().double() if getattr(norm, "bias", None) is not None else None
        if w is not None:
            k = k * w
        shift = -mean * k + (b if b is not None else 0)
        return k, shift
    return None


def cycle_bn_factors(cycle, level):
    """(k, shift) of level `level` of a CycleBatchNormList (per-level BN, shared affine)."""
    k, shift = bn_factors(cycle[level])
    if cycle._affine:
        w, b = cycle.weight.detach().double(), cycle.bias.detach().double()
        k, shift = k * w, shift * w + b
    return k, shift


def _fold_uniform(spec, k, int4=True, positive_scales=False):
    """Fold gain k [O] into a UniformWeight; returns (new spec, log note) or (None, reason kept)."""
    view = (-1,) + (1,) * (spec.codes.dim() - 1)
    negative = k < 0
    codes, scale = spec.codes, spec.scale.double().expand(k.shape) * k
    note = f"folded ({int(negative.sum())} channels with negative scale)" if negative.any() else "folded"
    if positive_scales and negative.any():
        codes = codes * torch.where(negative, -1, 1).view(view).to(codes.dtype)
        box = container(spec.lo, spec.hi, int4)  # the container of the unfolded codes
        lo, hi = RANGES[box]
        if codes.min().item() < lo or codes.max().item() > hi:
            return None, (f"kept: a channel with negative BN gain has code {spec.lo}, whose negation "
                          f"leaves {box.upper()} (positive scales asked)")
        scale = scale.abs()
        note = f"folded (codes of {int(negative.sum())} channels negated)"
    # lo/hi stay those of the grid: they choose the container, which the codes fit (checked above)
    return UniformWeight(codes, scale.float(), spec.lo, spec.hi, spec.method, spec.bits, spec.note), note


def _make_layer(name, layer, fold, int_bias, int4, norm, activation, positive_scales):
    """ExportLayer for `layer`, folding `fold` = (k, shift) if given; returns (module, log row)."""
    quantized = isinstance(layer, (QuantConv2d, QuantLinear))
    act = act_spec(layer.input_quantizer) if quantized else None
    wspec = weight_spec(layer) if quantized else None
    if quantized and wspec is None and layer.standardize_weight:
        raise NotExportable(f"{name}: float weight with STANDARDIZE")
    bias = layer.bias.detach().double() if layer.bias is not None else None
    float_weight = layer.weight.detach() if wspec is None else None
    bn_note, fold_note = "-", "folded"
    if fold is not None:
        k, shift = fold
        if isinstance(wspec, LevelWeight):
            bn_note = "kept: LQ-Net level set would become per-channel"
            fold = None
        elif isinstance(wspec, UniformWeight):
            folded, why = _fold_uniform(wspec, k, int4, positive_scales)
            if folded is None:
                bn_note, fold = why, None
            else:
                wspec, fold_note = folded, why
        else:
            float_weight = (float_weight.double() * k.view((-1,) + (1,) * (float_weight.dim() - 1))).float()
        if fold is not None:
            bias = (bias * k if bias is not None else 0) + shift
            norm, bn_note = None, fold_note
    elif norm is not None:
        bn_note = (f"kept: {type(norm).__name__} does not fold" if bn_factors(norm) is None
                   else "kept (folding off)")
    out = ExportLayer(name, layer, act, wspec, bias.float() if bias is not None else None, norm,
                      activation, int_bias=int_bias, float_weight=float_weight)
    row = [name, type(layer).__name__,
           act.describe(int4) if act is not None else "float",
           wspec.describe(int4) if wspec is not None else "float", bn_note,
           out.bias_note or "-"]
    return out, row


def _replace(parent, child, old, new):
    setattr(parent, child, new)
    for value in vars(parent).values():  # detectron2's FPN also keeps its convs in plain lists
        if isinstance(value, list):
            value[:] = [new if item is old else item for item in value]


def prepare_export(model, fold_bn=True, int_bias=True, int4=True, positive_scales=False):
    """Return (export copy of `model` in eval mode, log rows [LOG_COLUMNS]).

    `model` itself is not modified. Raises NotExportable naming the layer if a quantizer has no
    exact exported form. `positive_scales`: fold a negative BN gain by negating codes, never into
    a negative weight scale (see the module docstring).
    """
    model = copy.deepcopy(model).eval()
    rows = []
    done = set()
    # 1. Head convs followed by a per-level CycleBatchNormList inside an nn.Sequential.
    for seq_name, seq in list(model.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (cname, conv), (nname, norm) in zip(children, children[1:]):
            if not isinstance(conv, nn.Conv2d) or not isinstance(norm, CycleBatchNormList):
                continue
            name = f"{seq_name}.{cname}" if seq_name else cname
            if not fold_bn:
                continue
            levels, level_rows = [], []
            for level in range(len(norm)):
                layer, row = _wrap(name, conv, cycle_bn_factors(norm, level), int_bias, int4,
                                   getattr(conv, "norm", None), getattr(conv, "activation", None),
                                   positive_scales)
                levels.append(layer)
                level_rows.append(row)
            if not all(r[4].startswith("folded") for r in level_rows):
                continue  # one level refuses: keep the CycleBatchNormList (handled below)
            codes = getattr(levels[0], "weight_codes", None)
            for layer in levels[1:]:  # one integer weight for all levels, per-level scales
                if codes is not None and torch.equal(layer.weight_codes, codes):
                    layer.weight_codes = codes
            setattr(seq, cname, CycleExportLayer(levels))
            setattr(seq, nname, nn.Identity())
            row = level_rows[0]
            shared = all(layer.weight_codes is codes for layer in levels[1:]) if codes is not None else False
            notes = sorted({r[4] for r in level_rows} - {"folded"})
            row[4] = (f"folded per level ({len(norm)} CycleBatchNormList levels"
                      + (", shared codes" if shared else "") + ")" + ("; " + "; ".join(notes) if notes else ""))
            rows.append(row)
            done.add(name)
    # 2. Every other Conv2d / Linear (BN inside detectron2's Conv2d folded).
    for name, layer in list(model.named_modules()):
        if name in done or not isinstance(layer, (nn.Conv2d, nn.Linear)):
            continue
        norm = getattr(layer, "norm", None)
        fold = bn_factors(norm) if (fold_bn and norm is not None) else None
        new, row = _wrap(name, layer, fold, int_bias, int4, norm,
                         getattr(layer, "activation", None), positive_scales)
        parent_name, _, child = name.rpartition(".")
        _replace(model.get_submodule(parent_name), child, layer, new)
        rows.append(row)
    return model, rows


def _wrap(name, layer, fold, int_bias, int4, norm, activation, positive_scales):
    try:
        return _make_layer(name, layer, fold, int_bias, int4, norm, activation, positive_scales)
    except NotExportable as e:
        raise NotExportable(f"{name}: {e}") from None
