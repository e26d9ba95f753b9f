"""Their quantizer tensors -> our quantizer state with the same quantization levels, or an error.

The original model-quantization project (aim-uofa/model-quantization, mirrored as ziplab/QTool:
`models/quant.py` class `quantization`, `models/dorefa.py`, `models/alqnet.py`) stores per
quantizer `clip_val` (LSQ, PACT) or `basis` and codes (LQ-Net), plus `level_num` (L) and
`iteration`. Their forward maps x, per group g, onto these levels (c = clip_val, k = 0..L-1):

    lsq, unsigned (their `half_range`, default for activations):
        round(clamp(x/|c|, 0, 1) * (L-1)) / (L-1) * |c|              levels |c| * k / (L-1)
    lsq, signed (default for weights):
        (2 * round((clamp(x/|c|, -1, 1) + 1) / 2 * (L-1)) / (L-1) - 1) * |c|
                                                                     levels |c| * (2k/(L-1) - 1)
        e.g. 4 levels {-1, -1/3, 1/3, 1} * |c|: for even L the grid has no zero level
    lsq-native (their keyword `native`, signed), h = L // 2:
        clamp(round(x/|c| * h), -h, L-1-h) / h * |c|                  levels |c|/h * (k - h)
    pact (activations): round(clamp(x, 0, c) * (L-1)/c) / ((L-1)/c)  levels c * k / (L-1)
    lqnet: levels codec_vector [L, K] @ basis [K, G], codes {-1,+1} ({0,1} with half_range);
        x takes the level above the last threshold it exceeds, thresholds = thrs_multiplier @
        sorted levels (midpoints with their default scale 0.5). Their 3-level setting has
        K = 1 and codes (-1, +1, -1): two distinct levels.

Groups: weights use `quant_group` consecutive blocks of the [C_out, C_in] rows (default one per
output channel; clip_val [G,1,1,1], basis [K,G]); activations one group (clip_val [1]).

Each of these sends x to the nearest of its levels (clamping included), and so do ours. So a
conversion is exact when our target quantizer, given the converted tensors, has the same levels
per channel: `convert_quantizer` computes both level sets and raises `NotConvertible` when they
differ (e.g. their signed LSQ grid into our lsq, whose signed grid {-2..1} * step holds zero; our
lqnet weights hold their grid exactly). Equal sets agree up to float rounding, reported as the
largest level difference; an input exactly halfway between two levels may round the other way.
Their weight standardization (`wt_adaptive` "var-mean") is not quantizer state: build the
target with WEIGHT.STANDARDIZE instead.
"""
import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from ..quantizers.lqnet import make_codes
from ..quantizers.lsq import signed_bounds
from ..quantizers.registry import resolve_levels

THEIR_METHODS = {"weight": ("lsq", "lsq-native", "lqnet"), "act": ("lsq", "lsq-native", "pact", "lqnet")}
OUR_TARGETS = {"weight": ("lsq", "lqnet"), "act": ("lsq", "pact", "lqnet")}
DEFAULT_TARGET = {"lsq": "lsq", "lsq-native": "lsq", "pact": "pact", "lqnet": "lqnet"}
# Their tensors per method: (required, checked and then dropped).
THEIR_LEAVES = {"lsq": (("clip_val",), ()), "lsq-native": (("clip_val",), ()),
                "pact": (("clip_val",), ()),
                "lqnet": (("basis", "codec_vector"), ("auxil", "codec_index", "thrs_multiplier"))}
_REL_TOL = 1e-5  # level difference accepted as float rounding, relative to the group's max |level|


class NotConvertible(ValueError):
    """Their quantizer has no exact counterpart in our target quantizer; the message says why."""


@dataclass(frozen=True)
class SourceQuantizer:
    """How the original run configured one role's quantizers (their checkpoint stores only
    `level_num`), and which of our methods to convert into.

    method: their `choice` (THEIR_METHODS); bits/levels: their `*_bit`/`*_level` (levels 0 =
    2**bits); signed: not their `*_half_range` (None = their default: weights signed,
    activations unsigned; lqnet reads it from codec_vector); target: our method ("" = the same
    family, DEFAULT_TARGET); per_channel: our WEIGHT.PER_CHANNEL.
    """

    method: str
    bits: int
    levels: int = 0
    signed: Optional[bool] = None
    target: str = ""
    per_channel: bool = False

    def validate(self, role: str) -> "SourceQuantizer":
        """Return self, or raise ValueError naming the field, its value and the allowed choices."""
        if role not in THEIR_METHODS:
            raise ValueError(f"role={role!r}; allowed: {sorted(THEIR_METHODS)}")
        if self.method not in THEIR_METHODS[role]:
            raise ValueError(f"{role} method={self.method!r}; allowed: {THEIR_METHODS[role]}")
        if self.target_method not in OUR_TARGETS[role]:
            raise ValueError(f"{role} target={self.target!r}; allowed: {OUR_TARGETS[role]}")
        resolve_levels(self.bits, self.levels, name=f"{role} levels", bits_name=f"{role} bits")
        if self.per_channel and role != "weight":
            raise ValueError("per_channel=True is allowed for weights only")
        return self

    @property
    def target_method(self) -> str:
        return self.target or DEFAULT_TARGET.get(self.method, "")

    @property
    def num_levels(self) -> int:
        return self.levels or 2 ** self.bits


@dataclass
class Conversion:
    """Our tensors for one quantizer (leaf name -> tensor) and a one-line description."""

    state: Dict[str, torch.Tensor]
    summary: str


def _fmt(row) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in row.tolist()) + "]"


def _distinct_rows(levels: torch.Tensor, what: str) -> torch.Tensor:
    """Sorted distinct values of each row of `levels` [G, L]; every row must have as many."""
    rows = [torch.unique(r) for r in levels]
    if len({len(r) for r in rows}) != 1:
        raise NotConvertible(f"{what}: groups have different numbers of distinct levels")
    return torch.stack(rows)


def their_levels(source: SourceQuantizer, role: str, tensors: Dict[str, torch.Tensor]):
    """Their sorted distinct levels [G, L'] (float64) and, for lqnet, their basis as [G, K]."""
    n = source.num_levels
    if source.method == "lqnet":
        codes, basis = tensors["codec_vector"].double(), tensors["basis"].double()
        if codes.shape[0] != n or codes.shape[1] != basis.shape[0]:
            raise NotConvertible(f"codec_vector {tuple(codes.shape)} and basis {tuple(basis.shape)} "
                                 f"do not fit {n} levels")
        thresholds = tensors.get("thrs_multiplier")
        if thresholds is not None:
            midpoints = torch.zeros(n - 1, n, dtype=torch.float64)
            idx = torch.arange(n - 1)
            midpoints[idx, idx] = midpoints[idx, idx + 1] = 0.5
            if thresholds.shape != midpoints.shape or not torch.allclose(thresholds.double(), midpoints):
                raise NotConvertible("their thrs_multiplier is not the midpoint rule (their scale "
                                     "!= 0.5); our lqnet thresholds are midpoints")
        return _distinct_rows((codes @ basis).t(), "their lqnet"), basis.t()
    clip = tensors["clip_val"].double().reshape(-1)
    k = torch.arange(n, dtype=torch.float64)
    if source.method == "pact":
        if (clip <= 0).any():
            raise NotConvertible(f"their pact clip_val {_fmt(clip)} is not positive")
        return clip[:, None] * k / (n - 1), None
    clip = clip.abs()
    signed = role == "weight" if source.signed is None else source.signed
    if not signed:
        grid = k / (n - 1)
    elif source.method == "lsq-native":
        grid = (k - n // 2) / (n // 2)
    else:
        grid = 2 * k / (n - 1) - 1
    return clip[:, None] * grid, None


# Target builders: (levels [G, L], their basis [G, K] or None, role, dtype) -> (per-group tensors,
# other tensors, our levels [G, L'] computed from the tensors as stored in `dtype`, description).


def _our_lsq(levels, basis, role, dtype):
    n = levels.shape[1]
    step = (levels[:, 1] - levels[:, 0]).to(dtype).double()
    signed = bool((levels[:, 0] < 0).any())
    qn, qp = signed_bounds(n) if signed else (0, n - 1)
    ours = step[:, None] * torch.arange(-qn, qp + 1, dtype=torch.float64)
    extra = {"signed": torch.tensor(int(signed), dtype=torch.uint8)}
    return {"step": step}, extra, ours, f"levels={n}, {'signed' if signed else 'unsigned'}"


def _our_pact(levels, basis, role, dtype):
    n = levels.shape[1]
    alpha = levels[:, -1].to(dtype).double()
    ours = alpha[:, None] * torch.arange(n, dtype=torch.float64) / (n - 1)
    return {"alpha": alpha}, {}, ours, f"levels={n}"


def _our_lqnet(levels, basis, role, dtype):
    n = levels.shape[1]
    if basis is not None:  # their lqnet basis, codes of our role
        bits = basis.shape[1]
        our_levels = 2 ** bits
    elif role == "weight" and n == 3:  # ternary {-v, 0, v}
        basis, bits, our_levels = levels[:, 2:3], 2, 3
    elif n >= 2 and 2 ** round(math.log2(n)) == n:  # uniform grid as a power-of-two ladder
        bits, our_levels = round(math.log2(n)), n
        unit = (levels[:, 1] - levels[:, 0]) / (2 if role == "weight" else 1)
        basis = unit[:, None] * 2.0 ** torch.arange(bits, dtype=torch.float64)
    else:
        raise NotConvertible(f"our lqnet holds 2**bits levels (weights also 3); their grid has {n}")
    basis = basis.to(dtype).double()
    codes = make_codes(role, our_levels, bits).double()
    ours = _distinct_rows(basis @ codes.t(), "our lqnet")
    return {"basis": basis}, {}, ours, f"bits={bits}, levels={our_levels}"


_TARGET_BUILDERS = {"lsq": _our_lsq, "pact": _our_pact, "lqnet": _our_lqnet}


def _level_difference(theirs: torch.Tensor, ours: torch.Tensor, what: str, role: str) -> float:
    """Largest |their level - our level|; NotConvertible if the level sets differ beyond rounding."""
    if ours.shape != theirs.shape:
        raise NotConvertible(f"their {theirs.shape[1]} levels {_fmt(theirs[0])} vs {what} "
                             f"{ours.shape[1]} levels {_fmt(ours[0])}")
    error = (ours - theirs).abs().amax(1)
    worst = int((error / theirs.abs().amax(1)).argmax())
    if error[worst] <= _REL_TOL * theirs[worst].abs().max():
        return float(error.max())
    hint = ""
    if what.startswith("our lsq") and role == "weight" and theirs.shape[1] % 2 == 0 and (theirs[:, 0] < 0).all():
        hint = ("; their signed grid has no zero level, ours has one: our lqnet holds their grid "
                "exactly (--weight-target lqnet)")
    raise NotConvertible(f"their levels {_fmt(theirs[worst])} (group {worst}) are not {what} "
                         f"levels {_fmt(ours[worst])}{hint}")


def to_channels(t: torch.Tensor, per_channel: bool, num_channels: int, what: str) -> torch.Tensor:
    """Per-group values [G, ...] -> ours: [C, ...] per channel, or one group's values per tensor.

    G groups of consecutive weight rows become C channels when G divides C (repeat) or C divides
    G and each channel's groups agree; per tensor, all groups must agree. Raises NotConvertible.
    """
    groups = t.shape[0]
    if not per_channel:
        if not torch.equal(t, t[:1].expand_as(t)):
            raise NotConvertible(f"{groups} groups with different {what}, but our quantizer is per "
                                 f"tensor (for weights: convert with per_channel / --weight-per-channel)")
        return t[0]
    if num_channels % groups == 0:
        return t.repeat_interleave(num_channels // groups, dim=0)
    if groups % num_channels == 0:
        blocks = t.reshape(num_channels, groups // num_channels, *t.shape[1:])
        if torch.equal(blocks, blocks[:, :1].expand_as(blocks)):
            return blocks[:, 0]
    raise NotConvertible(f"their {groups} groups do not map onto {num_channels} output channels")


def convert_quantizer(source: SourceQuantizer, role: str, tensors: Dict[str, torch.Tensor],
                      num_channels: int = 1, level_num: Optional[torch.Tensor] = None) -> Conversion:
    """Our state (e.g. {"step", "signed", "initialized"}) reproducing their quantizer's levels.

    `tensors`: their leaves (clip_val, basis, codec_vector, ...); `level_num`: their stored L, if
    any, checked against `source`; `num_channels`: output channels of the layer (per-channel
    targets). `initialized` is set to 1 so our quantizer keeps the values instead of estimating
    them from the first batch. Raises NotConvertible (ValueError) with the reason.
    """
    source.validate(role)
    required, optional = THEIR_LEAVES[source.method]
    missing = [k for k in required if k not in tensors]
    extra = sorted(set(tensors) - set(required) - set(optional))
    if missing or extra:
        raise NotConvertible(f"their {source.method} stores {', '.join(required)}; found "
                             f"{', '.join(sorted(tensors)) or 'nothing'}")
    if level_num is not None and int(level_num.reshape(-1)[0]) != source.num_levels:
        raise NotConvertible(f"their level_num is {int(level_num.reshape(-1)[0])}, but bits="
                             f"{source.bits} levels={source.levels} give {source.num_levels}")
    theirs, basis = their_levels(source, role, tensors)
    if (theirs[:, -1] - theirs[:, 0] <= 0).any():
        raise NotConvertible(f"their levels collapse to a point: {_fmt(theirs[0])}")
    target = source.target_method
    dtype = tensors[required[0]].dtype
    grouped, extra_state, ours, shape_note = _TARGET_BUILDERS[target](theirs, basis, role, dtype)
    error = _level_difference(theirs, ours, f"our {target} ({shape_note})", role)
    state = {name: to_channels(t, source.per_channel, num_channels, name).to(dtype)
             for name, t in grouped.items()}
    state.update(extra_state)
    state["initialized"] = torch.tensor(1, dtype=torch.uint8)
    summary = (f"their {source.method} ({theirs.shape[1]} levels, {theirs.shape[0]} group(s)) -> "
               f"our {target} ({shape_note}{', per channel' if source.per_channel else ''}): "
               f"same levels up to float rounding ({error:.1e})")
    return Conversion(state, summary)
