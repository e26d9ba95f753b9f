"""What each quantizer becomes in a deployed graph: a uniform integer grid (QDQ) or a level set.

`act_spec(q)` and `weight_spec(layer)` read a quantizer in eval mode and return a description
that reproduces its output exactly:

  * `UniformAct(scale, lo, hi, formula)`: x_q = clamp(round(x / scale), lo, hi) * scale
    (LSQ, PACT, DoReFa activations). Becomes QuantizeLinear/DequantizeLinear.
  * `LevelAct(thresholds, values)`: x_q = values[#(thresholds < x)] (LQ-Net activations; the
    learned levels are not a uniform grid). Becomes a chain of Greater/Where, not QDQ.
  * `UniformWeight(codes, scale, lo, hi)`: W_q = codes * scale, integer codes in [lo, hi] and a
    per-tensor (0-d) or per-output-channel ([O]) scale (LSQ; DoReFa, whose levels (2k - n)/n are
    uniform although tanh picks them; XNOR {-a, a} and TWN {-a, 0, a}). Becomes an integer
    initializer + DequantizeLinear.
  * `LevelWeight(weight, levels)`: the already-quantized float weight plus its level set
    (LQ-Net, whose learned basis is not a uniform grid). Becomes a float constant whose level
    set is written in the consuming node's metadata.
  * `None`: full precision (method "none").

Containers: `container(lo, hi, int4=True)` picks the smallest ONNX integer type holding [lo, hi]
(INT4/UINT4 at opset 21 when `int4`, else INT8/UINT8, INT32 for biases).
"""
import json
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..quantizers.lqnet import LQNetQuantizer
from ..quantizers.lsq import LSQQuantizer, _EPS as LSQ_EPS
from ..quantizers.pact import PACTQuantizer, _EPS as PACT_EPS
from ..quantizers.dorefa import DoReFaQuantizer
from ..quantizers.binary import TernaryQuantizer, XNORQuantizer

# ONNX element types (onnx.TensorProto values), kept here so this module imports without onnx.
ONNX_TYPES = {"int4": 22, "uint4": 21, "int8": 3, "uint8": 2, "int32": 6}
RANGES = {"int4": (-8, 7), "uint4": (0, 15), "int8": (-128, 127), "uint8": (0, 255),
          "int32": (-2 ** 31, 2 ** 31 - 1)}


class NotExportable(ValueError):
    """A quantizer whose output cannot be written as QDQ or as a level set."""


def container(lo, hi, int4=True):
    """Name of the smallest ONNX integer type holding [lo, hi] ("int4", "uint8", ...)."""
    order = (["uint4", "int4"] if int4 else []) + ["uint8", "int8", "int32"]
    for name in order:
        a, b = RANGES[name]
        if a <= lo and hi <= b:
            return name
    raise NotExportable(f"integer range [{lo}, {hi}] fits no ONNX integer type")


@dataclass
class UniformAct:
    scale: torch.Tensor          # 0-d float
    lo: int
    hi: int
    method: str
    bits: int
    formula: str = "lsq"         # "lsq": round(clamp(x/s)) * s; "dorefa": round(clamp(x,0,1)*n)/n

    def kind(self):
        return "qdq"

    def describe(self, int4=True):
        c = container(self.lo, self.hi, int4)
        clip = (self.lo, self.hi) != RANGES[c]
        return f"{self.method}/{self.bits}b QDQ {c.upper()}" + (f" + Clip[{self.lo},{self.hi}]" if clip else "")


@dataclass
class LevelAct:
    thresholds: torch.Tensor     # [L-1] sorted
    values: torch.Tensor         # [L] sorted
    method: str
    bits: int

    def kind(self):
        return "levels"

    def describe(self, int4=True):
        return f"{self.method}/{self.bits}b NOT QDQ: {len(self.values)} learned levels (Greater/Where lookup)"


@dataclass
class UniformWeight:
    codes: torch.Tensor          # integer-valued, weight shape (int32)
    scale: torch.Tensor          # 0-d or [O] float
    lo: int
    hi: int
    method: str
    bits: int
    note: str = ""

    @property
    def per_channel(self):
        return self.scale.dim() == 1

    def kind(self):
        return "qdq"

    def dequantized(self):
        s = self.scale.view((-1,) + (1,) * (self.codes.dim() - 1)) if self.per_channel else self.scale
        return self.codes.to(s.dtype) * s

    def describe(self, int4=True):
        c = container(self.lo, self.hi, int4)
        where = "per-channel" if self.per_channel else "per-tensor"
        return f"{self.method}/{self.bits}b DQ {c.upper()} {where}" + (f" ({self.note})" if self.note else "")


@dataclass
class LevelWeight:
    weight: torch.Tensor         # the quantized float weight
    levels: torch.Tensor         # [L] or [O, L]
    method: str
    bits: int
    folded: Optional[torch.Tensor] = field(default=None)

    def kind(self):
        return "levels"

    def levels_json(self):
        return json.dumps([round(v, 8) for v in self.levels.flatten().tolist()]
                          if self.levels.dim() == 1 else
                          [[round(v, 8) for v in row] for row in self.levels.tolist()])

    def describe(self, int4=True):
        return (f"{self.method}/{self.bits}b NOT QDQ: float constant of the quantized weight, "
                f"{self.levels.shape[-1]} learned levels in node metadata")


def act_spec(q):
    """The exported form of activation quantizer `q` (eval mode), or None if it is float."""
    if q.method == "none":
        return None
    if isinstance(q, LSQQuantizer):
        qn, qp = q.bounds()
        return UniformAct(q.step.detach().clamp_min(LSQ_EPS).reshape(()).clone(), -qn, qp, q.method, q.bits)
    if isinstance(q, PACTQuantizer):
        n = q.levels - 1
        return UniformAct((q.alpha.detach().clamp_min(PACT_EPS) / n).reshape(()).clone(), 0, n,
                          q.method, q.bits)
    if isinstance(q, DoReFaQuantizer):
        n = q.levels - 1
        return UniformAct(torch.tensor(1.0 / n), 0, n, q.method, q.bits, formula="dorefa")
    if isinstance(q, LQNetQuantizer):
        basis = q.basis.view(-1, q.codes.shape[1]).float()
        values = (basis @ q.codes.t()).sort(dim=1).values[0]
        return LevelAct((values[1:] + values[:-1]) / 2, values, q.method, q.bits)
    raise NotExportable(f"activation quantizer {type(q).__name__} ({q.method}) has no export rule")


def _channel_amax(t, per_channel):
    return t.abs().flatten(1).amax(1) if per_channel else t.abs().amax()


def weight_spec(layer):
    """The exported form of a quantized layer's weight (eval mode), or None if it is float.

    Raises NotExportable if the integer factorization does not reproduce the quantizer's output.
    """
    q = layer.weight_quantizer
    if q.method == "none":
        return None
    with torch.no_grad():
        wq = layer.quantized_weight().detach().float()
    per_channel = bool(getattr(q, "per_channel", False))
    note = ""
    if isinstance(q, LQNetQuantizer):
        basis = q.basis.view(-1, q.codes.shape[1]).float()
        levels = (basis @ q.codes.t()).sort(dim=1).values
        return LevelWeight(wq, levels if per_channel else levels[0], q.method, q.bits)
    if isinstance(q, LSQQuantizer):
        scale = q.step.detach().float().clamp_min(LSQ_EPS).clone()
        qn, qp = q.bounds()
        lo, hi = -qn, qp
    elif isinstance(q, DoReFaQuantizer) and q.levels > 2:
        n = q.levels - 1
        scale = torch.full((q.num_channels,) if per_channel else (), 1.0 / n)
        lo, hi = -n, n
        note = f"levels (2k-{n})/{n}" + (", tanh-selected" if not q.uniform else "")
    elif isinstance(q, (DoReFaQuantizer, XNORQuantizer, TernaryQuantizer)):
        scale = _channel_amax(wq, per_channel)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        lo, hi = -1, 1
        note = {"xnor": "codes +-1", "ternary": "codes -1,0,1"}.get(q.method, "codes +-1 (binary)")
    else:
        raise NotExportable(f"weight quantizer {type(q).__name__} ({q.method}) has no export rule")
    s = scale.view((-1,) + (1,) * (wq.dim() - 1)) if scale.dim() == 1 else scale
    codes = torch.round(wq / s)
    error = (codes * s - wq).abs().max().item() if wq.numel() else 0.0
    tol = 1e-6 * max(wq.abs().max().item(), 1e-12)
    if error > tol or codes.min().item() < lo or codes.max().item() > hi:
        raise NotExportable(
            f"{q.method}/{q.bits}b weight: integer codes x scale do not reproduce the quantized "
            f"weight (max error {error:.3g}, codes in [{codes.min().item():.0f}, {codes.max().item():.0f}])")
    return UniformWeight(codes.to(torch.int32), scale, lo, hi, q.method, q.bits, note)
