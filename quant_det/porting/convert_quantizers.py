"""Replace the original project's quantizer tensors in a renamed state dict by our quantizer state.

The "model-quantization-resnet" rules move `<conv>.quant_weight.<leaf>` to
`<conv>.weight_quantizer.<leaf>` and `<conv>.quant_activation.<leaf>` to
`<conv>.input_quantizer.<leaf>` with their leaf names (`clip_val`, `basis`, ...).
`convert_renamed_quantizers` converts each such quantizer with `quantizer_values.convert_quantizer`
and, when the levels match exactly, replaces the moved tensors by ours (`step`, `signed`,
`alpha`, `basis`, `initialized` = 1): the old -> new entry of their main tensor now names ours
(`...quant_weight.clip_val -> ...weight_quantizer.step`) and the tensors only checked (LQ-Net's
`auxil`, `codec_vector`, `codec_index`, `thrs_multiplier`) become dropped keys. A quantizer
that cannot be converted (or all of them, when no method is given) loses its moved tensors,
which become dropped keys, and is reported with the reason: the output then loads into our
quantized model (QuantDetCheckpointer refuses quantizer keys the model does not have) and that
quantizer estimates its range from data.

Example:
    result = rename_state_dict(sd, builtin_rules("model-quantization-resnet"))
    report = convert_renamed_quantizers(sd, result, {"weight": SourceQuantizer("lsq-native", 2),
                                                     "act": SourceQuantizer("lsq", 2)})
"""
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Set, Tuple

import torch

from .quantizer_values import NotConvertible, SourceQuantizer, convert_quantizer

THEIR_KEY = re.compile(r".+\.(quant_weight|quant_activation)\.\w+")
OUR_KEY = re.compile(r"(?P<conv>.+)\.(?P<quantizer>weight_quantizer|input_quantizer)\.(?P<leaf>\w+)")
ROLE_OF = {"weight_quantizer": "weight", "input_quantizer": "act"}
ORIGIN = "quantizer conversion (checked)"
MAIN_LEAVES = ("clip_val", "basis")  # their tensor whose old -> new entry names our main tensor


@dataclass
class QuantizerReport:
    """Per quantizer (our module name, e.g. `res2.0.conv1.weight_quantizer`): what happened."""

    converted: List[Tuple[str, str]] = field(default_factory=list)  # (name, summary)
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (name, reason)

    def lines(self) -> List[str]:
        out = []
        if self.converted:
            out.append(f"quantizer values converted ({len(self.converted)}):")
            out += [f"  {name}: {summary}" for name, summary in self.converted]
        if self.failed:
            out.append(f"quantizer values NOT converted ({len(self.failed)}; their tensors are dropped, "
                       f"our quantizer estimates its range from data):")
            out += [f"  {name}: {reason}" for name, reason in self.failed]
        return out


def moved_quantizers(renamed) -> "OrderedDict[str, Dict[str, str]]":
    """our quantizer name -> {their leaf: their key}, for their tensors moved under our quantizers."""
    groups: "OrderedDict[str, Dict[str, str]]" = OrderedDict()
    for old, new in renamed:
        ours = OUR_KEY.fullmatch(new)
        if ours and THEIR_KEY.fullmatch(old):
            groups.setdefault(f"{ours['conv']}.{ours['quantizer']}", {})[ours["leaf"]] = old
    return groups


def _convert_one(name, leaves, source_sd, state_dict, sources):
    """convert_quantizer for one of our quantizers; raises NotConvertible with the reason."""
    conv, quantizer = name.rsplit(".", 1)
    role = ROLE_OF[quantizer]
    source = sources.get(role)
    if source is None:
        raise NotConvertible(f"no method given for their {role} quantizers (rename_checkpoint: "
                             f"--convert-quantizers --{'weight' if role == 'weight' else 'act'}-method ...)")
    weight = state_dict.get(f"{conv}.weight")
    if source.per_channel and weight is None:
        raise NotConvertible(f"per-channel target but no {conv}.weight to count output channels")
    their_prefix = next(iter(leaves.values())).rsplit(".", 1)[0]  # <module>.quant_weight
    level_num = source_sd.get(f"{their_prefix}.level_num")
    tensors = {leaf: source_sd[old] for leaf, old in leaves.items()}
    channels = weight.shape[0] if weight is not None else 1
    return convert_quantizer(source, role, tensors, num_channels=channels, level_num=level_num)


def convert_renamed_quantizers(source_sd: Dict[str, torch.Tensor], result,
                               sources: Dict[str, SourceQuantizer]) -> QuantizerReport:
    """Convert, in `result` (a rename.RenameResult of `source_sd`), every quantizer whose tensors
    the rules moved; `sources` maps "weight"/"act" to how the original run quantized them.

    Updates result.state_dict, result.renamed and result.dropped in place; returns the report.
    """
    report = QuantizerReport()
    new_name_of: Dict[str, str] = {}  # their key -> our key, for converted main tensors
    checked: Set[str] = set()  # their keys consumed without a counterpart
    failed: Dict[str, str] = {}  # their key -> reason, for quantizers not converted
    for name, leaves in moved_quantizers(result.renamed).items():
        try:
            conversion = _convert_one(name, leaves, source_sd, result.state_dict, sources)
        except NotConvertible as e:
            report.failed.append((name, str(e)))
            for leaf, old in leaves.items():
                del result.state_dict[f"{name}.{leaf}"]
                failed[old] = f"not converted: {e}"
            continue
        for leaf in leaves:
            del result.state_dict[f"{name}.{leaf}"]
        main = next(iter(conversion.state))
        for leaf, old in leaves.items():
            if leaf in MAIN_LEAVES:
                new_name_of[old] = f"{name}.{main}"
            else:
                checked.add(old)
        for leaf, value in conversion.state.items():
            result.state_dict[f"{name}.{leaf}"] = value
        flags = ", ".join(f"{leaf}={int(v)}" for leaf, v in conversion.state.items() if v.dtype == torch.uint8)
        report.converted.append((name, f"{conversion.summary}; {flags}"))
    result.dropped += [(old, ORIGIN) for old, _ in result.renamed if old in checked]
    result.dropped += [(old, failed[old]) for old, _ in result.renamed if old in failed]
    result.renamed = [(old, new_name_of.get(old, new)) for old, new in result.renamed
                      if old not in checked and old not in failed]
    return report
