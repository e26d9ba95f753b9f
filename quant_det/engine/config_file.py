"""Merge `--config-file` and the `KEY VALUE` overrides into a cfg, as detectron2's `merge_from_file`
/ `merge_from_list` do, plus what they cannot: a yaml written for the original low-bit fork is
translated (or refused, see quant_det/porting/compat.py), and an unknown key names the closest
valid keys.

Example:
    cfg = get_cfg(); add_quant_det_config(cfg)
    notes = merge_config_file(cfg, args)   # args: --config-file, --allow-original-key, opts
"""
import contextlib
import difflib
import os
from typing import List

from detectron2.config import CfgNode

from ..porting.compat import is_original_config, merge_original_config


def merge_config_file(cfg, args) -> List[str]:
    """Merge `args.config_file` (an original-fork yaml: translated, accepting the losses listed in
    `args.allow_original_key`) and then `args.opts` into `cfg`; return the translation notes.

    FileNotFoundError for a missing file; KeyError naming the closest keys for an unknown one.
    """
    if not os.path.isfile(args.config_file):
        raise FileNotFoundError(f"--config-file {args.config_file!r} does not exist")
    notes = []
    with suggest_config_keys(cfg):
        if is_original_config(args.config_file):  # written for the original fork: translate
            notes = [f"original-fork config: {n}" for n in merge_original_config(
                cfg, args.config_file, allow=getattr(args, "allow_original_key", ()))]
        else:
            cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    return notes


@contextlib.contextmanager
def suggest_config_keys(cfg):
    """Re-raise yacs' unknown-key errors (a KeyError from a yaml, an AssertionError from KEY VALUE
    overrides) as a KeyError that also names the closest valid keys."""
    try:
        yield
    except (KeyError, AssertionError) as e:
        message = str(e.args[0]) if e.args else ""
        if not message.startswith(("Non-existent config key: ", "Non-existent key: ")):
            raise
        key = message.split(": ", 1)[1]
        close = difflib.get_close_matches(key, _flat_keys(cfg), n=3, cutoff=0.75)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise KeyError(f"{key!r} is not a config key{hint} (valid keys are listed in "
                       f"detectron2/config/defaults.py and quant_det/config.py)") from None


def _flat_keys(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, CfgNode):
            yield from _flat_keys(v, f"{prefix}{k}.")
        else:
            yield prefix + k
