"""The one checkpoint reader, and the one `module.` stripper, for every place that reads a file.

MODEL.WEIGHTS, MODEL.WEIGHT_EXTRA and resuming (QuantDetCheckpointer), the digit
classifier's `init` and the renaming tool (quant_det/porting/rename.py) all read through
`read_checkpoint`, so a missing, empty, truncated or foreign file is the same error everywhere,
naming the file, instead of a deep unpickling traceback.

Example:
    state = strip_module_prefix(read_checkpoint("output/run/model_final.pth")["model"])
"""
import os
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager
from torch import nn

MODULE_PREFIX = "module."  # what (Distributed)DataParallel puts in front of every key
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # torch colours parts of its weights_only errors


def read_checkpoint(path: str, loader: Optional[Callable[[str], Any]] = None) -> Dict[str, Any]:
    """Read `path` with `loader`; return the file's dict, whose "model" is a dict of tensors/arrays.

    `loader` maps a local file name to that dict; it defaults to `DetectionCheckpointer._load_file`
    (.pkl model-zoo files, .pyth, and torch files; a bare state dict comes back as {"model": sd}).
    A missing, empty, truncated or foreign file raises FileNotFoundError/ValueError naming it.
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
        first_line = ANSI_COLOUR.sub("", str(e).splitlines()[0]) if str(e) else ""
        raise ValueError(
            f"cannot read checkpoint file {path!r} (truncated, or not a checkpoint?): "
            f"{type(e).__name__}: {first_line}"
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


def strip_module_prefix(state: Dict[str, Any]) -> "OrderedDict[str, Any]":
    """`state` (in its order) with the leading `module.` of (Distributed)DataParallel removed from
    every key that has one. Raises ValueError if that makes two keys one."""
    out = OrderedDict((k[len(MODULE_PREFIX):] if k.startswith(MODULE_PREFIX) else k, v)
                      for k, v in state.items())
    if len(out) != len(state):
        both = sorted(k for k in out if MODULE_PREFIX + k in state and k in state)
        raise ValueError(f"keys {both[:4]} are in the state dict both with and without 'module.'")
    return out
