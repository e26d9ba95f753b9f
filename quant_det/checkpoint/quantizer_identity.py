"""Compare the quantizers recorded in a checkpoint with the model's: another config is an error.

Every quantizer except "none" saves its identity (method, role, bits, levels, signedness,
per-channel; see `Quantizer.identity`) as `<layer>.<weight|input>_quantizer._extra_state`. On
load, a quantizer of the file whose identity differs from the model's quantizer of the same name
(or whose layer the model keeps float) is a mismatch:

- by default an error naming the file, the layers and both configs;
- with `reinit` (MODEL.QUANTIZATION.REINIT_MISMATCHED) the file's state of those quantizers is
  dropped, so the model's quantizers initialize from data, and each is logged;
- when resuming (`strict`) always an error: --resume continues the same run.

Quantizers the file does not have (a float checkpoint, or a low-bit backbone initializing a
Quantize-All detector) are not mismatches: they initialize from data. A file saved before
identities were recorded has quantizer state without `_extra_state`: it loads with a warning.

Example:
    state = resolve_quantizer_mismatches(model.state_dict(), file_state, "w4a4.pth", reinit=True)
"""
import logging
from typing import Any, Dict, List, Optional, Tuple

from ..quantizers.registry import decode_identity, describe_identity

logger = logging.getLogger(__name__)
IDENTITY_SUFFIX = "._extra_state"
QUANTIZER_NAMES = ("weight_quantizer", "input_quantizer")
REINIT_KEY = "MODEL.QUANTIZATION.REINIT_MISMATCHED"


def is_identity_key(key: str) -> bool:
    """True for `<layer>.weight_quantizer._extra_state` / `<layer>.input_quantizer._extra_state`."""
    return key.endswith(IDENTITY_SUFFIX) and key[: -len(IDENTITY_SUFFIX)].rsplit(".", 1)[-1] in QUANTIZER_NAMES


def identities(state: Dict[str, Any], path: str = "the model") -> Dict[str, dict]:
    """{quantizer module name: identity dict} of every identity recorded in `state`."""
    found = {}
    for key, value in state.items():
        if is_identity_key(key):
            try:
                found[key[: -len(IDENTITY_SUFFIX)]] = decode_identity(value)
            except ValueError as e:
                raise ValueError(f"checkpoint file {path!r}: {key}: {e}") from None
    return found


def find_mismatches(model_state: Dict[str, Any], file_state: Dict[str, Any],
                    path: str = "") -> List[Tuple[str, dict, Optional[dict]]]:
    """[(quantizer name, identity in the file, identity in the model or None if that layer is
    float in the model)] for the file's quantizers that the model's config does not reproduce."""
    wanted = identities(model_state)
    mismatches = []
    for name, saved in sorted(identities(file_state, path).items()):
        mine = wanted.get(name)
        if mine is None:
            if f"{name.rsplit('.', 1)[0]}.weight" in model_state:  # the layer exists, unquantized
                mismatches.append((name, saved, None))
        elif any(saved[k] != mine[k] for k in saved.keys() & mine.keys()):
            mismatches.append((name, saved, mine))
    return mismatches


def _listed(names, limit=4):
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def mismatch_message(path: str, mismatches, resuming: bool) -> str:
    """One line: the file, then per (file config, model config) pair the layers that have it."""
    groups: Dict[Tuple[str, str], List[str]] = {}
    for name, saved, mine in mismatches:
        groups.setdefault((describe_identity(saved), describe_identity(mine)), []).append(name)
    pairs = "; ".join(f"file {f} vs config {m}: {_listed(names)}" for (f, m), names in groups.items())
    if resuming:
        hint = (f"--resume continues a run with its own config; to start a new run from this "
                f"checkpoint give it as MODEL.WEIGHTS (with {REINIT_KEY} True to re-initialize "
                f"those quantizers from data)")
    else:
        hint = f"set {REINIT_KEY} True to re-initialize those quantizers from data instead"
    return (f"checkpoint file {path!r} was saved with another quantization config "
            f"(MODEL.QUANTIZATION): {len(mismatches)} quantizer(s) differ: {pairs}; {hint}")


def resolve_quantizer_mismatches(model_state: Dict[str, Any], file_state: Dict[str, Any], path: str,
                                 *, strict: bool = False, reinit: bool = False) -> Dict[str, Any]:
    """Return `file_state` to load, raising ValueError on mismatched quantizers (see module doc).

    With `reinit` (never with `strict`) the mismatched quantizers' keys are left out of the
    returned dict and one line per quantizer is logged. The file's (checked) identities are
    replaced by the model's, so they load whatever fields an older file recorded.
    """
    mismatches = find_mismatches(model_state, file_state, path)
    if mismatches and (strict or not reinit):
        raise ValueError(mismatch_message(path, mismatches, resuming=strict))
    for name, saved, mine in mismatches:
        logger.info(f"{REINIT_KEY}: {name} re-initialized from data (checkpoint {path}: "
                    f"{describe_identity(saved)}; config: {describe_identity(mine)})")
    dropped = tuple(name + "." for name, _, _ in mismatches)
    if dropped:
        file_state = {k: v for k, v in file_state.items() if not k.startswith(dropped)}
    _warn_if_unrecorded(model_state, file_state, path)
    # Checked: load the model's own encoding (an older file may encode fewer fields).
    return {k: model_state[k] if is_identity_key(k) and k in model_state else v
            for k, v in file_state.items()}


def _quantizer_of(key: str) -> Optional[str]:
    """`a.conv1.weight_quantizer.step` -> `a.conv1.weight_quantizer`; None for other keys."""
    module = key.rsplit(".", 1)[0]
    return module if module.rsplit(".", 1)[-1] in QUANTIZER_NAMES else None


def _warn_if_unrecorded(model_state, file_state, path):
    """Log once if the file has quantizer state but recorded no identity (saved before quant_det
    recorded identities, or converted from another project): its config cannot be checked."""
    recorded = set(identities(file_state, path))
    unrecorded = sorted({_quantizer_of(k) for k in file_state if _quantizer_of(k)} - recorded)
    unrecorded = [n for n in unrecorded if n + IDENTITY_SUFFIX in model_state]
    if unrecorded:
        logger.warning(f"checkpoint file {path!r} records no quantization config for "
                       f"{len(unrecorded)} quantizer(s) ({_listed(unrecorded)}): loaded unchecked")
