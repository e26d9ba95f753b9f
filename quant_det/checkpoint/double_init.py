"""MODEL.WEIGHT_EXTRA: initialize a model from two checkpoints, the second overriding the first.

Typical use: WEIGHT_EXTRA is the full-precision detector, WEIGHTS a renamed low-bit backbone;
the detector's head/FPN come from the first file and the backbone (with its quantizer
parameters) from the second. Unlike the original project, a missing or unreadable file is an
error, and a shape mismatch is an error unless `drop_mismatch` is set.

Example:
    report = load_double_init(model, "backbone_w2a2.pth", "fcos_fp32.pth")
    report.source["backbone.bottom_up.res2.0.conv1.weight"]  # -> "backbone_w2a2.pth"
"""
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from tabulate import tabulate
from torch import nn

from .io import read_checkpoint, strip_module_prefix
from .quantizer_identity import resolve_quantizer_mismatches

logger = logging.getLogger(__name__)


def _state_dict_for(model: nn.Module, data: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The file's state dict in the model's names: tensors, `module.` stripped, heuristics applied."""
    state = strip_module_prefix(
        {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in data["model"].items()})
    if data.get("matching_heuristics", False):  # Caffe2/pycls model-zoo files, as detectron2 does
        state = align_and_update_state_dicts(
            model.state_dict(), state, c2_conversion=data.get("__author__") == "Caffe2"
        )
    return state


@dataclass
class DoubleInitReport:
    """What load_double_init did; `source` maps each loaded model key to the file it came from."""

    weights: str
    weight_extra: str
    source: Dict[str, str] = field(default_factory=dict)
    overridden: List[str] = field(default_factory=list)  # in both files: taken from `weights`
    missing: List[str] = field(default_factory=list)  # model keys neither file had
    unexpected: Dict[str, List[str]] = field(default_factory=dict)  # file -> keys not in model
    dropped: List[Tuple[str, str, tuple, tuple]] = field(default_factory=list)  # file, key, shapes

    def table(self) -> str:
        """One table, a row per module: its keys and where they came from (or why not)."""
        rows: Dict[Tuple[str, str], List[str]] = {}

        def add(key, where):
            module, _, leaf = key.rpartition(".")
            rows.setdefault((module, where), []).append(leaf)

        for key, path in self.source.items():
            add(key, "WEIGHTS" if path == self.weights else "WEIGHT_EXTRA")
        for key in self.missing:
            add(key, "missing (neither file)")
        for path, keys in self.unexpected.items():
            for key in keys:
                add(key, f"unused from {'WEIGHTS' if path == self.weights else 'WEIGHT_EXTRA'}")
        for path, key, got, want in self.dropped:
            add(key, f"dropped: shape {tuple(got)} != model {tuple(want)}")
        body = [(m or "(root)", ", ".join(sorted(leaves)), where)
                for (m, where), leaves in sorted(rows.items())]
        title = f"WEIGHTS = {self.weights or '(none)'}\nWEIGHT_EXTRA = {self.weight_extra}\n"
        return title + tabulate(body, headers=["module", "keys", "from"], tablefmt="pipe")


def load_double_init(model: nn.Module, weights: str, weight_extra: str,
                     drop_mismatch: bool = False, reinit_mismatched: bool = False) -> DoubleInitReport:
    """Load `weight_extra` into `model`, then `weights` on top (its keys win); return the report.

    `weights` may be "" (only the extra file is loaded). Both files are read and checked before
    the model is touched, so an error leaves the model unchanged. Raises FileNotFoundError or
    ValueError naming the file, and ValueError naming key and both shapes on a shape mismatch
    unless `drop_mismatch` (the key is then skipped and reported). Quantizers saved with another
    config are an error unless `reinit_mismatched` (see quantizer_identity.py).
    """
    if not weight_extra:
        raise ValueError("load_double_init needs weight_extra (MODEL.WEIGHT_EXTRA); got ''")
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    model_state = model.state_dict()
    report = DoubleInitReport(weights=weights, weight_extra=weight_extra)
    merged: Dict[str, torch.Tensor] = {}
    for path in [weight_extra] + ([weights] if weights else []):
        state = _state_dict_for(model, read_checkpoint(path))
        state = resolve_quantizer_mismatches(model_state, state, path, reinit=reinit_mismatched)
        for key, value in state.items():
            if key not in model_state:
                report.unexpected.setdefault(path, []).append(key)
                continue
            want, got = tuple(model_state[key].shape), tuple(value.shape)
            if want != got:
                if not drop_mismatch:
                    raise ValueError(
                        f"{path}: key {key!r} has shape {got} but the model expects {want} "
                        f"(set MODEL.WEIGHT_EXTRA_DROP_MISMATCH True to skip such keys)"
                    )
                report.dropped.append((path, key, got, want))
                continue
            if key in merged and path == weights:
                report.overridden.append(key)
            merged[key] = value
            report.source[key] = path
    model.load_state_dict(merged, strict=False)
    report.missing = [k for k in model_state if k not in merged]
    logger.info("Double initialization:\n%s", report.table())
    return report
