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
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils.file_io import PathManager
from fvcore.common.checkpoint import _strip_prefix_if_present
from tabulate import tabulate
from torch import nn

from .quantizer_identity import resolve_quantizer_mismatches

logger = logging.getLogger(__name__)


def read_checkpoint_file(path: str, loader: Optional[Callable[[str], Any]] = None) -> Dict[str, Any]:
    """Read `path` the way DetectionCheckpointer does (.pkl, .pyth, .pth); return its dict.

    The result always has "model": a dict of tensors/arrays. A missing, empty, truncated or
    foreign file raises FileNotFoundError/ValueError naming the file instead of a deep
    unpickling traceback. `loader` defaults to `DetectionCheckpointer._load_file`.
    """
    if not path:
        raise ValueError("checkpoint path is empty")
    local = path if os.path.isfile(path) else PathManager.get_local_path(path)
    if not os.path.isfile(local):
        raise not_a_checkpoint_file(path)
    if os.path.getsize(local) == 0:
        raise ValueError(f"checkpoint file {path!r} is empty (0 bytes)")
    if loader is None:
        loader = DetectionCheckpointer(nn.Module(), save_to_disk=False)._load_file
    try:
        data = loader(local)
    except Exception as e:  # torch.load/pickle raise many types for truncated or foreign files
        raise ValueError(
            f"cannot read checkpoint file {path!r} (truncated, or not a checkpoint?): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    state = data.get("model") if isinstance(data, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"checkpoint file {path!r} holds no state dict (found {type(state).__name__})")
    for key, value in state.items():
        if not isinstance(value, (torch.Tensor, np.ndarray)):
            raise ValueError(
                f"checkpoint file {path!r} is not a model checkpoint: entry {key!r} of its "
                f"state dict is a {type(value).__name__}, not a tensor"
            )
    return data


def not_a_checkpoint_file(path: str, key: str = "checkpoint file") -> Exception:
    """The error for a `path` that is not a file: FileNotFoundError, or ValueError for a directory
    (naming the checkpoint inside it that was probably meant)."""
    if not os.path.isdir(path):
        return FileNotFoundError(f"{key} {path!r} not found")
    last = os.path.join(path, "last_checkpoint")
    if os.path.isfile(last):
        with open(last) as f:
            hint = f"its last checkpoint is {os.path.join(path, f.read().strip())!r}"
    else:
        files = sorted(n for n in os.listdir(path) if n.endswith((".pth", ".pkl")))
        hint = f"it holds {', '.join(files[:4])}" if files else "it holds no .pth/.pkl file"
    return ValueError(f"{key} {path!r} is a directory, not a checkpoint file; {hint}")


def _state_dict_for(model: nn.Module, data: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The file's state dict in the model's names: tensors, `module.` stripped, heuristics applied."""
    state = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in data["model"].items()}
    _strip_prefix_if_present(state, "module.")
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
        state = _state_dict_for(model, read_checkpoint_file(path))
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
