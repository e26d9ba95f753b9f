"""Rename the keys of a classification checkpoint into a file detectron2 loads as MODEL.WEIGHTS.

Rules (see rules.py) are anchored regexes; the first rule that fullmatches a key decides its new
name (or drops it on purpose). Keys no rule matches are "unconverted": reported, and left out of
the output unless `keep_unmatched`. The output is
`{"model": {new_key: tensor}, "__author__": "quant_det rename_checkpoint", "matching_heuristics": False}`
so DetectionCheckpointer loads the names verbatim (no fuzzy name matching).

Example:
    result = rename_checkpoint("resnet50.pth", "R-50-d2.pth", rule_set="torchvision-resnet",
                               prefix="backbone.bottom_up.")
    print(format_report(result))
"""
import functools
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..checkpoint import atomic_torch_save, read_checkpoint, strip_module_prefix
from .convert_quantizers import QuantizerReport, moved_quantizers, convert_renamed_quantizers
from .quantizer_values import SourceQuantizer
from .rules import RenameRule, collect_rules

AUTHOR = "quant_det rename_checkpoint"


@dataclass
class RenameResult:
    """The renamed state dict and what happened to every input key."""

    state_dict: "OrderedDict[str, torch.Tensor]"
    renamed: List[Tuple[str, str]] = field(default_factory=list)  # (old, new), input order
    dropped: List[Tuple[str, str]] = field(default_factory=list)  # (old, rule origin)
    unconverted: List[str] = field(default_factory=list)  # no rule matched
    quantizers: Optional[QuantizerReport] = None  # set when quantizer values were converted


def rename_state_dict(state_dict: Dict[str, torch.Tensor], rules: Sequence[RenameRule],
                      prefix: str = "", keep_unmatched: bool = False) -> RenameResult:
    """Apply `rules` (first fullmatch wins) to every key; prepend `prefix` to renamed keys.

    With `keep_unmatched`, unconverted keys are copied under their old name (no prefix).
    Raises ValueError if two keys would get the same new name.
    """
    result = RenameResult(OrderedDict())
    origin_of: Dict[str, str] = {}
    for old, value in state_dict.items():
        rule = next((r for r in rules if r.pattern.fullmatch(old)), None)
        if rule is None:
            result.unconverted.append(old)
            if not keep_unmatched:
                continue
            new = old
        else:
            new = rule.rename(old)
            if new is None:
                result.dropped.append((old, rule.origin))
                continue
            new = prefix + new
            result.renamed.append((old, new))
        if new in origin_of:
            raise ValueError(f"keys {origin_of[new]!r} and {old!r} would both be renamed to {new!r}")
        origin_of[new] = old
        result.state_dict[new] = value
    return result


def _load_source(path: str, unsafe_pickle: bool = False) -> Dict[str, Any]:
    """{"model": the file's "model" or "state_dict" entry, or the file itself if bare}.

    .pkl files are plain pickles; torch files load with `weights_only` unless `unsafe_pickle`.
    """
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    else:
        _check_torch_file(path)
        try:
            data = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
        except pickle.UnpicklingError as e:
            # Only torch's weights_only refusal of a real pickle is fixed by --unsafe-pickle.
            if unsafe_pickle or "weights only load failed" not in str(e).lower():
                raise
            raise pickle.UnpicklingError(
                f"{str(e).splitlines()[0]} (if you trust it, retry with --unsafe-pickle)") from e
    if isinstance(data, dict):
        for wrapper in ("model", "state_dict"):
            if isinstance(data.get(wrapper), dict):
                return {"model": data[wrapper]}
    return {"model": data}


def read_source_state_dict(path: str, unsafe_pickle: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """Read a checkpoint to rename (.pkl or torch file, wrapped or bare) with the shared
    `read_checkpoint`; return its state dict with `module.` stripped and arrays as tensors.

    torch files are read with `weights_only=True`; checkpoints holding arbitrary Python objects
    (e.g. argparse namespaces) need `unsafe_pickle=True`, for files you trust only.
    """
    data = read_checkpoint(path, loader=functools.partial(_load_source, unsafe_pickle=unsafe_pickle))
    return OrderedDict((key, torch.from_numpy(value) if isinstance(value, np.ndarray) else value)
                       for key, value in strip_module_prefix(data["model"]).items())


def _check_torch_file(path: str) -> None:
    """ValueError naming `path` unless it starts like a torch.save file (a zip archive, or a
    pickle of protocol >= 2 for the legacy format): e.g. a text file is not a checkpoint."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise ValueError(f"cannot read {path!r}: the file is empty (0 bytes)")
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise ValueError(f"cannot read {path!r}: not a checkpoint (a torch.save file is a zip "
                         f"archive or a pickle; this one starts with {head!r})")


def check_output_path(src: str, dst: str, force: bool = False) -> None:
    """Refuse to overwrite the input (always) or an existing file (unless `force`), and an output
    in a directory that does not exist."""
    if not dst.endswith(".pth"):
        raise ValueError(f"output {dst!r} must end in .pth (detectron2 reads .pkl files as pickles)")
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise ValueError(f"output {dst!r}: its directory {os.path.dirname(dst) or folder!r} does "
                         f"not exist; create it first")
    if os.path.exists(dst):
        if os.path.exists(src) and os.path.samefile(src, dst):
            raise ValueError(f"refusing to overwrite the input checkpoint {src!r}")
        if not force:
            raise ValueError(f"output {dst!r} exists; pass force=True (--force) to overwrite it")


def save_detectron2_weights(state_dict: Dict[str, torch.Tensor], path: str) -> None:
    """Atomically save `state_dict` as a detectron2 MODEL.WEIGHTS file, names taken verbatim."""
    atomic_torch_save(
        {"model": dict(state_dict), "__author__": AUTHOR, "matching_heuristics": False}, path
    )


def rename_checkpoint(src: str, dst: Optional[str] = None, *, rule_set: Optional[str] = None,
                      mapping_files: Sequence[Tuple[str, str]] = (), regex_rules: Sequence[str] = (),
                      prefix: str = "", keep_unmatched: bool = False, dry_run: bool = False,
                      force: bool = False, unsafe_pickle: bool = False,
                      quantizer_sources: Optional[Dict[str, SourceQuantizer]] = None) -> RenameResult:
    """Read `src`, rename its keys, and (unless `dry_run`) write `dst`; return the RenameResult.

    Rules: `mapping_files` pairs (FROM.txt, TO.txt), then `regex_rules` ('REGEX=>REPLACEMENT'),
    then the built-in `rule_set` (see rules.RULE_SETS); the first fullmatch wins.
    `quantizer_sources` ({"weight"/"act": SourceQuantizer}) converts the original
    model-quantization project's quantizer tensors, once moved, into ours
    (see convert_quantizers.py); the outcome is in `result.quantizers`. Without it, such moved
    tensors are dropped and reported, so that the output still loads into our quantized model.
    """
    rules = collect_rules(rule_set, mapping_files, regex_rules)
    if not rules:
        raise ValueError("no rules: give rule_set, mapping_files or regex_rules")
    if not dry_run:
        if not dst:
            raise ValueError("an output path is required unless dry_run")
        check_output_path(src, dst, force)
    if quantizer_sources:
        quantizer_sources = {role: q.validate(role) for role, q in quantizer_sources.items()}
    source = read_source_state_dict(src, unsafe_pickle)
    result = rename_state_dict(source, rules, prefix, keep_unmatched)
    if quantizer_sources or moved_quantizers(result.renamed):  # without sources: all dropped, reported
        result.quantizers = convert_renamed_quantizers(source, result, quantizer_sources or {})
    if not result.state_dict:
        raise ValueError(f"no key of {src!r} was converted; check the rules "
                         f"(first keys: {result.unconverted[:5]})")
    if not dry_run:
        save_detectron2_weights(result.state_dict, dst)
    return result


def format_report(result: RenameResult) -> str:
    """'old -> new' per renamed key, then dropped and unconverted keys, converted and
    not converted quantizers (if any), then counts."""
    lines = [f"{old} -> {new}" for old, new in result.renamed]
    lines += [f"{old} -> (dropped by {origin})" for old, origin in result.dropped]
    if result.unconverted:
        lines.append(f"unconverted ({len(result.unconverted)}):")
        lines += [f"  {key}" for key in result.unconverted]
    if result.quantizers is not None:
        lines += result.quantizers.lines()
    lines.append(f"{len(result.renamed)} renamed, {len(result.dropped)} dropped, "
                 f"{len(result.unconverted)} unconverted")
    return "\n".join(lines)
