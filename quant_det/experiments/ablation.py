"""The ablation table of a run set: every quantized row against its control and its parent.

Issue 10 compares each QAT row with its *control* (the same parent fine-tuned with the same
schedule, quantization off: the cost of quantization alone) and with its *parent* (the original's
way). This module builds that table from the run set file (row order, `meta`) and the finished
rows' run.json / config.yaml, so README's "What costs AP" table is generated, never typed:

    python tools/ablation_table.py experiments/lowbit.yaml --readme README.md

Rows without `meta.control` (parents, controls, classifiers) and unfinished rows are left out.
"""
import os
import re

from .comparisons import records_by_id, reference, trained_iterations
from .dashboard import collect_runs
from .records import markdown_table, read_yaml, replace_marked_section, signed

BEGIN, END = "<!-- ablation:{}:begin -->", "<!-- ablation:{}:end -->"
COLUMNS = ["row", "task", "head", "A/W", "what changes", "iterations", "AP", "vs control",
           "vs parent"]


def _change(comment):
    """The row's comment without the "ablation:" prefix the dashboard uses for grey points."""
    return re.sub(r"^ablation:\s*", "", str(comment or "")).strip()


def ablation_rows(run_set, root=None):
    """[(row, task, head, A/W, what changes, iterations, AP, vs control, vs parent), ...] for the
    finished rows of `run_set` (a run-set yaml path) that name a control, grouped by task and
    head variant, in the file's order within a group."""
    spec = read_yaml(run_set)
    if not isinstance(spec, dict) or not isinstance(spec.get("runs"), list):
        raise ValueError(f"{run_set}: expected a run set with a 'runs' list")
    root = root or spec.get("root")
    if not root or not os.path.isdir(root):
        raise ValueError(f"{run_set}: its root {root!r} is not a directory")
    by_id = records_by_id(collect_runs([root]))
    set_name = os.path.basename(root.rstrip("/"))
    rows = []
    for entry in spec["runs"]:
        run = by_id.get(f"{set_name}/{entry['name']}")
        if run is None or not run["meta"].get("control"):
            continue
        ap = run["metrics"]["bbox"]["AP"]
        deltas = []
        for which in ("control", "parent"):
            ref = reference(run, by_id, which)
            deltas.append(None if ref is None else ap - ref["metrics"]["bbox"]["AP"])
        if run["meta"]["control"] == (run["meta"].get("parent") or run.get("init_from")):
            deltas[0] = None  # PTQ rows: the parent is the only reference
        meta = run["meta"]
        rows.append((f"`{entry['name']}`", meta.get("task", ""), meta.get("variant", ""),
                     meta.get("bits", ""), _change(meta.get("comment")), trained_iterations(run),
                     f"{ap:.1f}", signed(deltas[0]).replace("-", "−"),
                     signed(deltas[1]).replace("-", "−")))
    return sorted(rows, key=lambda row: (row[1], row[2]))  # stable: file order within a group


def ablation_table(run_set, root=None):
    """The markdown table of `ablation_rows`."""
    return markdown_table(COLUMNS, ablation_rows(run_set, root))


def replace_section(readme, name, body):
    """Write `body` between the ablation:`name` markers of `readme`."""
    replace_marked_section(readme, BEGIN.format(name), END.format(name), body)
