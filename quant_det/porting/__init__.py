"""Offline porting from other projects: checkpoint key renaming into detectron2 names, the original
model-quantization project's quantizer values, and the original fork's yaml translation.

Nothing here runs during training; quant_det/checkpoint/ loads what these tools write.
"""
from .compat import is_original_config, merge_original_config, translate_original_config
from .rename import RenameResult, format_report, rename_checkpoint, rename_state_dict
from .rules import RULE_SETS, RenameRule, builtin_rules, expand_braces, read_mapping_files

__all__ = [
    "is_original_config", "merge_original_config", "translate_original_config",
    "RenameResult", "format_report", "rename_checkpoint", "rename_state_dict",
    "RULE_SETS", "RenameRule", "builtin_rules", "expand_braces", "read_mapping_files",
]
