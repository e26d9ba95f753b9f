"""Runtime checkpoint loading: atomic saves, WEIGHT_EXTRA double init, the checkpoint reader.

Offline porting of other projects' checkpoints and configs lives in quant_det/porting/.
"""
from .checkpointer import QuantDetCheckpointer, atomic_torch_save, load_double_init
from .double_init import DoubleInitReport
from .io import read_checkpoint, strip_module_prefix

__all__ = [
    "QuantDetCheckpointer", "atomic_torch_save",
    "DoubleInitReport", "load_double_init", "read_checkpoint", "strip_module_prefix",
]
