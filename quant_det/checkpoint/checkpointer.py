"""QuantDetCheckpointer: detectron2's DetectionCheckpointer plus WEIGHT_EXTRA and atomic saves.

- `resume_or_load`: resuming from `last_checkpoint` ignores WEIGHT_EXTRA; otherwise, with
  `weight_extra` set, the model is double-initialized (extra file first, then MODEL.WEIGHTS).
- `save`: the checkpoint is written to a hidden temp file in the same directory, fsync'ed and
  renamed into place; only then is `last_checkpoint` rewritten (atomically, too). A process
  killed mid-save leaves at most a `.model_*.pth.*.tmp` file, never a truncated `model_*.pth`
  or a `last_checkpoint` pointing at one.
- loading a missing, empty, truncated or foreign file raises an error naming the file.

Example:
    checkpointer = QuantDetCheckpointer(model, cfg.OUTPUT_DIR, weight_extra=cfg.MODEL.WEIGHT_EXTRA,
                                        drop_mismatch=cfg.MODEL.WEIGHT_EXTRA_DROP_MISMATCH,
                                        optimizer=optimizer, scheduler=scheduler)
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
"""
import os
import uuid
from typing import Any, Callable, Dict, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .double_init import DoubleInitReport, load_double_init, read_checkpoint_file


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
                 drop_mismatch: bool = False, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.weight_extra = weight_extra
        self.drop_mismatch = drop_mismatch
        self.double_init_report: Optional[DoubleInitReport] = None

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Resume from `last_checkpoint` if asked and present (WEIGHT_EXTRA is then skipped);
        else double-initialize from (weight_extra, path) if weight_extra is set; else load `path`.

        Returns the checkpoint's extra data (e.g. "iteration") when resuming or loading one
        file, {} after a double initialization (its report is kept in `double_init_report`).
        """
        if resume and self.has_checkpoint():
            return self.load(self.get_checkpoint_file())
        if self.weight_extra:
            self.double_init_report = load_double_init(
                self.model, path, self.weight_extra, drop_mismatch=self.drop_mismatch
            )
            return {}
        return self.load(path, checkpointables=[])

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
        """As DetectionCheckpointer.load, but a missing file is a FileNotFoundError naming it."""
        if path and not os.path.isfile(path) and not os.path.isfile(self.path_manager.get_local_path(path)):
            raise FileNotFoundError(f"checkpoint file {path!r} not found")
        return super().load(path, checkpointables=checkpointables)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        return read_checkpoint_file(filename, loader=super()._load_file)
