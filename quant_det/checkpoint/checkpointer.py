"""QuantDetCheckpointer: detectron2's DetectionCheckpointer plus WEIGHT_EXTRA and atomic saves.

- `resume_or_load`: resuming from `last_checkpoint` ignores WEIGHT_EXTRA; otherwise, with
  `weight_extra` set, the model is double-initialized (`double_initialize`: extra file first,
  then MODEL.WEIGHTS, each through the same `_load_model` as a single MODEL.WEIGHTS file).
- `save`: the checkpoint is written to a hidden temp file in the same directory, fsync'ed and
  renamed into place; only then is `last_checkpoint` rewritten (atomically, too). A process
  killed mid-save leaves at most a `.model_*.pth.*.tmp` file, never a truncated `model_*.pth`
  or a `last_checkpoint` pointing at one.
- loading a missing, empty, truncated or foreign file raises an error naming the file, and so
  does a file that does not fit the model (see `check_compatible`): no shared key (another
  architecture), a shape mismatch (unless `drop_mismatch`), quantizers saved with another
  MODEL.QUANTIZATION (unless `reinit_mismatched`, then they initialize from data; see
  quantizer_identity.py), or, when resuming, any missing/unexpected key.

Example:
    checkpointer = QuantDetCheckpointer(model, cfg.OUTPUT_DIR, weight_extra=cfg.MODEL.WEIGHT_EXTRA,
                                        drop_mismatch=cfg.MODEL.WEIGHT_EXTRA_DROP_MISMATCH,
                                        optimizer=optimizer, scheduler=scheduler)
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
"""
import os
import re
import uuid
from typing import Any, Callable, Dict, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .double_init import DoubleInitReport
from .io import MODULE_PREFIX, not_a_checkpoint_file, read_checkpoint, strip_module_prefix
from .quantizer_identity import is_identity_key, resolve_quantizer_mismatches

# State-dict keys of the quantizer submodules of QuantConv2d/QuantLinear.
QUANTIZER_KEY = re.compile(r"(^|.*\.)(weight|input)_quantizer\.[^.]+$")


def _quantized_layer(key: str) -> str:
    """`backbone.res2.0.conv1.weight_quantizer.step` -> `backbone.res2.0.conv1`."""
    return key.rsplit(".", 2)[0]


def _listed(keys, limit=8):
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_compatible(model_state: Dict[str, Any], file_state: Dict[str, Any], path: str, *,
                     strict: bool = False, drop_mismatch: bool = False,
                     reinit: bool = False) -> Dict[str, Any]:
    """Raise ValueError naming `path` and the keys if the file's state dict does not fit the model;
    return the state dict to load (`module.` stripped; without re-initialized quantizers).

    Always an error: no key in common (a checkpoint of another architecture); quantizers recorded
    with another identity than the model's (another MODEL.QUANTIZATION: method, bits, levels,
    signedness, per-channel, or a layer the model keeps float), unless `reinit` and not `strict`
    (see quantizer_identity.py); quantizer keys in the file that differ, layer by layer, from the
    model's (files that record no identity).
    The model may quantize more layers than the file: e.g. a low-bit backbone initializing a
    Quantize-All detector; those layers' quantizers initialize from data. A shape mismatch is an error unless
    `drop_mismatch` (then detectron2 skips those keys with a warning). With `strict` (resuming
    our own checkpoint) any missing or unexpected key is an error. A float checkpoint (no
    quantizer keys) may initialize a quantized model: its quantizers initialize from data.
    """
    file_state = strip_module_prefix(file_state)
    file_keys = set(file_state)
    model_keys = set(model_state)
    common = file_keys & model_keys
    if not common:
        raise ValueError(f"checkpoint file {path!r} shares no key with the model (another "
                         f"architecture?): file keys {_listed(file_keys, 4)}; model keys "
                         f"{_listed(model_keys, 4)}")
    file_state = resolve_quantizer_mismatches(model_state, file_state, path, strict=strict, reinit=reinit)
    file_keys = set(file_state)
    common = file_keys & model_keys
    # Identities were compared above; a file saved before they were recorded has none.
    file_q = {k for k in file_keys if QUANTIZER_KEY.match(k) and not is_identity_key(k)}
    model_q = {k for k in model_keys if QUANTIZER_KEY.match(k) and not is_identity_key(k)}
    # Compared per quantized layer of the file: a low-bit backbone file may initialize a model that
    # also quantizes its FPN and head (Quantize-All double init); those quantizers start from data.
    file_layers = {_quantized_layer(k) for k in file_q}
    model_q_of_file_layers = {k for k in model_q if _quantized_layer(k) in file_layers}
    if file_q != model_q_of_file_layers:
        raise ValueError(
            f"checkpoint file {path!r} holds quantizer state that does not match the model (saved "
            f"with a different MODEL.QUANTIZATION?): in the file only: "
            f"{_listed(file_q - model_q_of_file_layers) or '-'}; in the model only: "
            f"{_listed(model_q_of_file_layers - file_q) or '-'}")
    shapes = [(k, tuple(file_state[k].shape), tuple(model_state[k].shape)) for k in sorted(common)
              if hasattr(file_state[k], "shape")]
    shapes = [(k, f, m) for k, f, m in shapes if f != m]
    if shapes and (strict or not drop_mismatch):
        listed = "; ".join(f"{k}: file {f} vs model {m}" for k, f, m in shapes[:8])
        hint = "" if strict else " (set MODEL.WEIGHT_EXTRA_DROP_MISMATCH True to skip such keys)"
        raise ValueError(f"checkpoint file {path!r} does not fit the model: {len(shapes)} key(s) "
                         f"differ in shape: {listed}{hint}")
    missing = {k for k in model_keys - file_keys if not is_identity_key(k)}
    if strict and (missing or file_keys - model_keys):
        raise ValueError(
            f"checkpoint file {path!r} cannot resume this model (different config?): missing "
            f"{_listed(missing) or '-'}; unexpected {_listed(file_keys - model_keys) or '-'}")
    return file_state


def _update_in_place(state: Dict[str, Any], resolved: Dict[str, Any]) -> None:
    """Make `state` (keys maybe `module.`-prefixed; torch's `_metadata` kept) hold exactly the
    entries of `resolved` (check_compatible's result, prefix stripped)."""
    for key in list(state):
        name = key[len(MODULE_PREFIX):] if key.startswith(MODULE_PREFIX) else key
        if name in resolved:
            state[key] = resolved[name]
        else:
            del state[key]


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Call `write(f)` on a temp file next to `path`, fsync it, then os.replace it onto `path`.

    Readers see either the old file or the complete new one. On any error the temp file is
    removed and `path` is untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def atomic_torch_save(obj: Any, path: str) -> None:
    """torch.save(obj, path), atomically (see atomic_write)."""
    atomic_write(path, lambda f: torch.save(obj, f))


class QuantDetCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with MODEL.WEIGHT_EXTRA double initialization and atomic saves."""

    def __init__(self, model, save_dir: str = "", *, weight_extra: str = "",
                 drop_mismatch: bool = False, reinit_mismatched: bool = False, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.weight_extra = weight_extra
        self.drop_mismatch = drop_mismatch
        self.reinit_mismatched = reinit_mismatched
        self.double_init_report: Optional[DoubleInitReport] = None
        self._strict = False  # resuming: the file must fit the model exactly
        self._loading = ""
        # Keys of the state dict the last `_load_model` checked; None for model-zoo files,
        # which detectron2 renames inside its own `_load_model`.
        self._file_keys: Optional[set] = None

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Resume from `last_checkpoint` if asked and present (WEIGHT_EXTRA is then skipped);
        else double-initialize from (weight_extra, path) if weight_extra is set; else load `path`.

        Returns the checkpoint's extra data (e.g. "iteration") when resuming or loading one
        file, {} after a double initialization (its report is kept in `double_init_report`).
        """
        if resume and self.has_checkpoint():
            self._strict = True
            try:
                return self.load(self.get_checkpoint_file())
            finally:
                self._strict = False
        if self.weight_extra:
            self.double_init_report = self.double_initialize(path)
            return {}
        return self.load(path, checkpointables=[])

    def double_initialize(self, weights: str) -> DoubleInitReport:
        """Load `weight_extra` into the model, then `weights` ("" = none) on top (its keys win);
        return the report (also logged as one table).

        Each file goes through `_load_model`, like a single MODEL.WEIGHTS: `check_compatible`
        (architecture, shapes unless `drop_mismatch`, quantizer identities unless
        `reinit_mismatched`), detectron2's model-zoo renaming and fvcore's log of missing and
        unexpected keys. Both files are read before the model is touched, so a missing or
        unreadable file leaves it unchanged; a WEIGHTS file that does not fit the model raises
        after WEIGHT_EXTRA was loaded.
        """
        files = [("MODEL.WEIGHT_EXTRA", self.weight_extra)] + ([("MODEL.WEIGHTS", weights)] if weights else [])
        checkpoints = [self._read(path) for _, path in files]
        report = DoubleInitReport(weights=weights, weight_extra=self.weight_extra)
        model_keys = list(self.model.state_dict())
        for (key, path), checkpoint in zip(files, checkpoints):
            self.logger.info("[Checkpointer] Loading %s from %s ...", key, path)
            self._loading = path
            incompatible = self._load_model(checkpoint)
            self._log_incompatible_keys(incompatible)
            skipped = set(incompatible.missing_keys) | {k for k, _, _ in incompatible.incorrect_shapes}
            report.record(path, [k for k in model_keys if k not in skipped and
                                 (self._file_keys is None or k in self._file_keys)], incompatible)
        return report.finish(model_keys)

    def save(self, name: str, **kwargs: Any) -> None:
        """Write `<save_dir>/<name>.pth` atomically, then point `last_checkpoint` at it."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name {name!r} must not contain a directory")
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically rewrite `<save_dir>/last_checkpoint` with the given basename."""
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda f: f.write(last_filename_basename.encode("utf-8")))

    def load(self, path: str, checkpointables=None) -> Dict[str, Any]:
        """As DetectionCheckpointer.load, but a missing file or a directory is an error naming it."""
        if path:
            self._local_file(path)
        self._loading = path
        return super().load(path, checkpointables=checkpointables)

    def _local_file(self, path: str) -> str:
        """`path` as a local file name; FileNotFoundError/ValueError naming it if it is none."""
        if os.path.isfile(path):
            return path
        local = self.path_manager.get_local_path(path)
        if not os.path.isfile(local):
            raise not_a_checkpoint_file(path)
        return local

    def _read(self, path: str) -> Dict[str, Any]:
        """The checkpoint dict of `path`, read as `load` reads it."""
        return self._load_file(self._local_file(path))

    def _load_file(self, filename: str) -> Dict[str, Any]:
        return read_checkpoint(filename, loader=super()._load_file)

    def _load_model(self, checkpoint: Dict[str, Any]):
        self._file_keys = None
        if not checkpoint.get("matching_heuristics", False):  # model-zoo files are renamed later
            resolved = check_compatible(
                self.model.state_dict(), checkpoint["model"], self._loading, strict=self._strict,
                drop_mismatch=self.drop_mismatch, reinit=self.reinit_mismatched)
            _update_in_place(checkpoint["model"], resolved)
            self._file_keys = set(resolved)
        return super()._load_model(checkpoint)


def load_double_init(model, weights: str, weight_extra: str, drop_mismatch: bool = False,
                     reinit_mismatched: bool = False) -> DoubleInitReport:
    """Double-initialize `model` from `weight_extra`, then `weights` on top, without a run's
    checkpointer (see `QuantDetCheckpointer.double_initialize`); return the report."""
    if not weight_extra:
        raise ValueError("load_double_init needs weight_extra (MODEL.WEIGHT_EXTRA); got ''")
    checkpointer = QuantDetCheckpointer(model, save_to_disk=False, weight_extra=weight_extra,
                                        drop_mismatch=drop_mismatch, reinit_mismatched=reinit_mismatched)
    return checkpointer.double_initialize(weights)
