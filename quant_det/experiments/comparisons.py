"""How a finished run relates to the others: its id, its bit widths, its parent and control rows,
its AP difference to them, and which rows are superseded.

Shared by the dashboard's tables (`dashboard.py`) and its AP-vs-bits plot (`plot.py`). A run is
a record of `dashboard.collect_runs`: a run.json dict with "path" and "meta".

Example:
    by_id = records_by_id(records)
    ap_delta(run, by_id, "control")  # e.g. -4.2, or None without a control row
"""
import os

from .records import read_yaml


def parse_bits(text):
    """"A/W" -> (activation bits, weight bits) as floats; "ter" is log2(3) bits, "bin" 1."""
    named = {"ter": 1.58, "bin": 1.0, "fp32": 32.0}
    parts = str(text).split("/")
    try:
        bits = tuple(named.get(p.strip().lower()) or float(p) for p in parts)
    except ValueError:
        raise ValueError(f"bits {text!r}: expected 'A/W' such as '4/4', '32/32' or 'ter/ter'")
    if len(bits) != 2:
        raise ValueError(f"bits {text!r}: expected 'A/W' such as '4/4', '32/32' or 'ter/ter'")
    return bits


def run_id(run):
    """`<run set>/<row name>` (the run directory's last two parts): tells demo rows from sweep rows."""
    return "/".join(os.path.dirname(run["path"]).replace(os.sep, "/").split("/")[-2:])


def records_by_id(records):
    """{run_id(run): run} of `records`, for `reference` and `ap_delta`."""
    return {run_id(run): run for run in records}


def reference(run, by_id, which):
    """The run's "parent" or "control" record (same run set), or None."""
    meta = run["meta"]
    if which == "control":
        name = meta.get("control")
    else:
        name = meta.get("parent") or run.get("extra_from") or run.get("init_from")
    if not name:
        return None
    ref = by_id.get(run_id(run).split("/")[0] + "/" + name)
    return ref if ref is not None and ref is not run else None


def ap_delta(run, by_id, which):
    """AP(run) - AP(its parent or control), or None."""
    ref = reference(run, by_id, which)
    return None if ref is None else run["metrics"]["bbox"]["AP"] - ref["metrics"]["bbox"]["AP"]


def superseded_by(records):
    """{run id: id of the run whose meta.supersedes names it}."""
    return {old: run_id(run) for run in records for old in run["meta"].get("supersedes", [])}


NO_TRAINING_MODES = ("eval", "calibrate")


def _opt(opts, key):
    """The value following `key` in a flat detectron2 opts list, or None."""
    opts = [str(o) for o in opts]
    return opts[opts.index(key) + 1] if key in opts[:-1] else None


def trained_iterations(run):
    """Iterations the row trained: 0 for calibration / evaluation-only rows (MODEL.QUANTIZATION.MODE
    calibrate or eval, in its opts or its config.yaml), else SOLVER.MAX_ITER of its config.yaml."""
    config = read_yaml(os.path.join(os.path.dirname(run["path"]), "config.yaml")) or {}
    mode = _opt(run.get("opts", []), "MODEL.QUANTIZATION.MODE") or \
        ((config.get("MODEL") or {}).get("QUANTIZATION") or {}).get("MODE")
    if mode in NO_TRAINING_MODES:
        return 0
    return (config.get("SOLVER") or {}).get("MAX_ITER")
