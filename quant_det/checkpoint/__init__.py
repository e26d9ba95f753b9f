"""Checkpoint tools: key renaming into detectron2 names, WEIGHT_EXTRA double init, atomic saves."""
from .checkpointer import QuantDetCheckpointer, atomic_torch_save
from .double_init import DoubleInitReport, load_double_init, read_checkpoint_file
from .rename import RenameResult, format_report, rename_checkpoint, rename_state_dict
from .rules import RULE_SETS, RenameRule, builtin_rules, expand_braces, read_mapping_files

__all__ = [
    "QuantDetCheckpointer", "atomic_torch_save",
    "DoubleInitReport", "load_double_init", "read_checkpoint_file",
    "RenameResult", "format_report", "rename_checkpoint", "rename_state_dict",
    "RULE_SETS", "RenameRule", "builtin_rules", "expand_braces", "read_mapping_files",
]
