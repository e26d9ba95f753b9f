"""`convert_to_quantization(model, cfg)`: swap the Conv2d/Linear layers in SCOPE for quantized ones.

Which layers, and at which precision, is decided by MODEL.QUANTIZATION (see config.py):
  * a Conv2d (detectron2's wrapper or plain `nn.Conv2d`, e.g. RetinaNet/FCOS predictor convs) or
    `nn.Linear` is a candidate if its name equals a SCOPE prefix or starts with "<prefix>.";
  * SKIP regexes (re.fullmatch on the name) keep a candidate full precision, and so does
    SKIP_PREDICTORS for the dense heads' prediction convs (`PREDICTOR_NAMES`);
  * the first POLICY entry [regex, weight_bits, act_bits] whose regex fullmatches the name sets its
    bit widths (32 = that side stays float); otherwise WEIGHT.BITS / ACT.BITS apply;
  * every SKIP and POLICY entry must match a candidate (policy_check.py): a typo is an error.
One table logs every Conv2d/Linear of the model: what it became, or why it stayed float.
The converted model computes each layer's quantized weight once per forward (layers/weight_reuse.py).
"""
import logging
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from tabulate import tabulate
from torch import nn

from .config import LSQ_INITS, MODES
from .layers import QuantConv2d, QuantLinear, enable_weight_reuse
from .policy_check import check_entries_match
from .quantizers import FLOAT_BITS, build_quantizer, check_bits, methods_for, resolve_levels

logger = logging.getLogger(__name__)
KEY = "MODEL.QUANTIZATION"
# Last name component of the RetinaNet/FCOS prediction convs (plain nn.Conv2d, no norm after them):
# class logits, box deltas, FCOS centerness. Kept float by MODEL.QUANTIZATION.SKIP_PREDICTORS.
PREDICTOR_NAMES = ("cls_score", "bbox_pred", "ctrness")


def _check_method(key, method, allowed):
    if method not in allowed:
        raise ValueError(f"{key}={method!r} is not a known method; allowed: {', '.join(allowed)}")


def _compile(key, pattern):
    try:
        return re.compile(pattern)
    except (re.error, TypeError) as e:
        raise ValueError(f"{key} entry {pattern!r} is not a valid regex: {e}") from None


@dataclass(frozen=True)
class QuantizationSpec:
    """Validated MODEL.QUANTIZATION; `QuantizationSpec.from_config(cfg)` raises on bad values.

    A run validates once, in `tools/train_net.py`'s setup, and passes the spec on (e.g.
    `Trainer(cfg, spec)`); `convert_to_quantization(model, cfg)` validates for callers that
    start from a cfg.
    """

    scope: Tuple[str, ...] = ()
    skip: Tuple[str, ...] = ()
    policy: Tuple[Tuple[str, int, int], ...] = ()
    mode: str = "qat"
    calib_iters: int = 100
    weight_method: str = "none"
    weight_bits: int = 4
    weight_levels: int = 0
    per_channel: bool = False
    weight_standardize: bool = False
    act_method: str = "none"
    act_bits: int = 4
    act_levels: int = 0
    skip_predictors: bool = False
    lsq_init: str = "paper"
    range_weight_decay: float = -1.0
    bn_reestimate_iters: int = 0
    distill_weight: float = 0.0
    distill_teacher: str = ""

    @classmethod
    def from_config(cls, cfg) -> "QuantizationSpec":
        q = cfg.MODEL.QUANTIZATION
        spec = cls(
            scope=tuple(q.SCOPE), skip=tuple(q.SKIP),
            policy=tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in q.POLICY),
            mode=q.MODE, calib_iters=q.CALIB_ITERS,
            weight_method=q.WEIGHT.METHOD, weight_bits=q.WEIGHT.BITS,
            weight_levels=q.WEIGHT.LEVELS, per_channel=q.WEIGHT.PER_CHANNEL,
            weight_standardize=q.WEIGHT.STANDARDIZE,
            act_method=q.ACT.METHOD, act_bits=q.ACT.BITS, act_levels=q.ACT.LEVELS,
            skip_predictors=q.SKIP_PREDICTORS, lsq_init=q.LSQ_INIT,
            range_weight_decay=q.RANGE_WEIGHT_DECAY, bn_reestimate_iters=q.BN_REESTIMATE_ITERS,
            distill_weight=q.DISTILL.WEIGHT, distill_teacher=q.DISTILL.TEACHER,
        )
        spec.validate()
        return spec

    @property
    def enabled(self) -> bool:
        return len(self.scope) > 0

    def validate(self):
        """Raise ValueError naming the MODEL.QUANTIZATION key, its value and the allowed choices."""
        for i, s in enumerate(self.scope):
            if not isinstance(s, str) or not s:
                raise ValueError(f"{KEY}.SCOPE[{i}]={s!r}: must be a non-empty module-path prefix")
        for pattern in self.skip:
            _compile(f"{KEY}.SKIP", pattern)
        for i, entry in enumerate(self.policy):
            key = f"{KEY}.POLICY[{i}]"
            if not (isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[0], str)):
                raise ValueError(f"{key}={entry!r} is malformed: expected [regex, weight_bits, act_bits]")
            _compile(key, entry[0])
            check_bits(entry[1], allow_float=True, name=f"{key} weight_bits")
            check_bits(entry[2], allow_float=True, name=f"{key} act_bits")
        _check_method(f"{KEY}.MODE", self.mode, MODES)
        if not isinstance(self.calib_iters, int) or self.calib_iters < 1:
            raise ValueError(f"{KEY}.CALIB_ITERS={self.calib_iters!r}: allowed an int >= 1")
        _check_method(f"{KEY}.WEIGHT.METHOD", self.weight_method, methods_for("weight"))
        _check_method(f"{KEY}.ACT.METHOD", self.act_method, methods_for("act"))
        for side, bits, levels in (("WEIGHT", self.weight_bits, self.weight_levels),
                                   ("ACT", self.act_bits, self.act_levels)):
            resolve_levels(bits, levels, name=f"{KEY}.{side}.LEVELS", bits_name=f"{KEY}.{side}.BITS")

        self._check_training_keys()
        self._check_buildable()

    def _check_training_keys(self):
        if not isinstance(self.skip_predictors, bool):
            raise ValueError(f"{KEY}.SKIP_PREDICTORS={self.skip_predictors!r}: allowed True or False")
        _check_method(f"{KEY}.LSQ_INIT", self.lsq_init, LSQ_INITS)
        if not isinstance(self.range_weight_decay, (int, float)) or self.range_weight_decay != self.range_weight_decay:
            raise ValueError(f"{KEY}.RANGE_WEIGHT_DECAY={self.range_weight_decay!r}: allowed a float "
                             "(< 0 = SOLVER.WEIGHT_DECAY, >= 0 = this value)")
        if isinstance(self.bn_reestimate_iters, bool) or not isinstance(self.bn_reestimate_iters, int) \
                or self.bn_reestimate_iters < 0:
            raise ValueError(f"{KEY}.BN_REESTIMATE_ITERS={self.bn_reestimate_iters!r}: allowed an int >= 0 (0 = off)")
        if not isinstance(self.distill_weight, (int, float)) or not self.distill_weight >= 0:
            raise ValueError(f"{KEY}.DISTILL.WEIGHT={self.distill_weight!r}: allowed a float >= 0 (0 = off)")
        if not isinstance(self.distill_teacher, str):
            raise ValueError(f"{KEY}.DISTILL.TEACHER={self.distill_teacher!r}: allowed a checkpoint path "
                             "or \"\" (= MODEL.WEIGHT_EXTRA, else MODEL.WEIGHTS)")

    def _check_buildable(self):
        """Let the quantizers reject method/bits/levels combinations (e.g. xnor needs 1 bit)."""
        combos = [(f"{KEY}.WEIGHT", "weight", self.weight_method, self.weight_bits, self.weight_levels),
                  (f"{KEY}.ACT", "act", self.act_method, self.act_bits, self.act_levels)]
        for i, (_, wbits, abits) in enumerate(self.policy):
            combos.append((f"{KEY}.POLICY[{i}] weight_bits", "weight", self.weight_method, wbits, 0))
            combos.append((f"{KEY}.POLICY[{i}] act_bits", "act", self.act_method, abits, 0))
        for key, role, method, bits, levels in combos:
            try:
                _make_quantizer(method, role, bits, levels)
            except ValueError as e:
                raise ValueError(f"{key} (METHOD {method!r}, BITS {bits}): {e}") from None

    def bits_for(self, name: str) -> Tuple[int, int, Optional[str]]:
        """Return (weight_bits, act_bits, matching POLICY regex or None) for a layer name."""
        for pattern, wbits, abits in self.policy:
            if re.fullmatch(pattern, name):
                return wbits, abits, pattern
        return self.weight_bits, self.act_bits, None


def _in_scope(name: str, scope) -> bool:
    return any(name == s or name.startswith(s + ".") for s in scope)


def _make_quantizer(method, role, bits, levels, per_channel=False, num_channels=1, lsq_init="paper"):
    if bits == FLOAT_BITS:
        return build_quantizer("none", role, 8)
    # A POLICY override of the bit width resets LEVELS to 2**bits.
    q = build_quantizer(method, role, bits, levels=levels, per_channel=per_channel,
                        num_channels=num_channels)
    if method == "lsq":
        q.init_rule = lsq_init
    return q


def is_predictor(name: str) -> bool:
    """True for the dense heads' prediction convs, e.g. "head.cls_score" (see PREDICTOR_NAMES)."""
    return name.rpartition(".")[2] in PREDICTOR_NAMES


def quantize_module(module: nn.Module, spec: QuantizationSpec, wbits: int, abits: int):
    """Return the quantized replacement of one Conv2d/Linear `module`."""
    levels_w = spec.weight_levels if wbits == spec.weight_bits else 0
    levels_a = spec.act_levels if abits == spec.act_bits else 0
    wq = _make_quantizer(spec.weight_method, "weight", wbits, levels_w, spec.per_channel,
                         module.weight.shape[0], spec.lsq_init)
    aq = _make_quantizer(spec.act_method, "act", abits, levels_a, lsq_init=spec.lsq_init)
    cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
    return cls.from_float(module, wq, aq, standardize_weight=spec.weight_standardize and wbits != FLOAT_BITS)


def convert_to_quantization(model: nn.Module, cfg) -> nn.Module:
    """Swap the layers selected by cfg.MODEL.QUANTIZATION in place and return `model`.

    The logged table (one row per Conv2d/Linear: name, type, weight, activation, note) stays
    available as `model.quantization_table`. Does nothing (the table is []) when SCOPE is empty,
    so default configs give the float model.

    Example:
        model = convert_to_quantization(build_model(cfg), cfg)
    """
    return apply_quantization(model, QuantizationSpec.from_config(cfg))


def apply_quantization(model: nn.Module, spec: QuantizationSpec) -> nn.Module:
    """`convert_to_quantization` for a spec validated earlier (a run validates MODEL.QUANTIZATION
    once, in setup, and passes the spec on): swap in place, set `model.quantization_table`,
    return `model`."""
    model.quantization_table = quantize_model(model, spec) if spec.enabled else []
    return model


def quantize_model(model: nn.Module, spec: QuantizationSpec) -> List[Tuple[str, ...]]:
    """Implementation of convert_to_quantization for an already validated spec."""
    names = [n for n, _ in model.named_modules()]
    for i, s in enumerate(spec.scope):
        if not any(_in_scope(n, [s]) for n in names):
            top = sorted({n.split(".")[0] for n in names if n})
            raise KeyError(f"{KEY}.SCOPE[{i}]={s!r} names no module of the model; "
                           f"top-level modules are: {', '.join(top)}")
    check_entries_match(spec, [n for n, m in model.named_modules()
                               if isinstance(m, (nn.Conv2d, nn.Linear)) and _in_scope(n, spec.scope)])
    skips = [re.compile(p) for p in spec.skip]
    rows = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or isinstance(
                module, (QuantConv2d, QuantLinear)):
            continue
        kind = type(module).__name__
        if not _in_scope(name, spec.scope):
            rows.append((name, kind, "float", "float", "outside SCOPE"))
            continue
        skip = next((p.pattern for p in skips if p.fullmatch(name)), None)
        if skip is not None:
            rows.append((name, kind, "float", "float", f"SKIP {skip!r}"))
            continue
        if spec.skip_predictors and is_predictor(name):
            rows.append((name, kind, "float", "float", "SKIP_PREDICTORS"))
            continue
        wbits, abits, rule = spec.bits_for(name)
        new = quantize_module(module, spec, wbits, abits)
        parent_name, _, child = name.rpartition(".")
        _replace_module(model.get_submodule(parent_name), child, module, new)
        rows.append((name, kind, _describe(new.weight_quantizer), _describe(new.input_quantizer),
                     f"POLICY {rule!r}" if rule else ""))
    if any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules()):
        enable_weight_reuse(model)  # shared head convs quantize their weight once per forward
    logger.info("convert_to_quantization:\n" + tabulate(
        rows, headers=["module", "type", "weight", "activation", "note"], tablefmt="pipe"))
    return rows


def _replace_module(parent: nn.Module, child: str, old: nn.Module, new: nn.Module) -> None:
    """setattr(parent, child, new), and also replace `old` in the parent's plain-list attributes:
    detectron2's FPN calls its convs through the lists `lateral_convs`/`output_convs`, so a swap
    of the registered submodule alone would leave the float conv in use."""
    setattr(parent, child, new)
    for value in vars(parent).values():
        if isinstance(value, list):
            value[:] = [new if item is old else item for item in value]


def _describe(quantizer) -> str:
    if quantizer.method == "none":
        return "float"
    return f"{quantizer.method}/{quantizer.bits}b" + (
        f"/{quantizer.levels}L" if quantizer.levels != 2 ** quantizer.bits else "")
