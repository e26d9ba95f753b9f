"""The AP-parity table of ONNX exports, generated from the reports `tools/export_onnx.py --check-ap`
writes next to each .onnx (`<name>.export.json`), so README's numbers are never typed:

    python tools/export_table.py experiments/export/*.export.json --readme README.md
"""
import json
import os

from tabulate import tabulate

from ..experiments.records import replace_marked_section

BEGIN, END = "<!-- export-parity:begin -->", "<!-- export-parity:end -->"
COLUMNS = ["export (report)", "ONNX", "PyTorch AP", "onnxruntime AP", "Δ AP",
           "largest single-layer diff (of its max abs output)", "BN folded / kept", "command"]


def read_report(path):
    """The export report at `path` (a dict); ValueError naming the file and the missing field if it
    is not a --check-ap report of the whole detector."""
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable export report ({e})") from e
    for key in ("command", "onnx_bytes", "opset", "int4", "log", "layer_max_abs_diff", "ap"):
        if key not in report:
            raise ValueError(f"{path}: field {key!r} missing (written by tools/export_onnx.py "
                             "--check-ap of this version?)")
    return report


def _onnx_kind(report):
    if any("INT4" in row["weight"] + row["activation"] for row in report["log"]):  # UINT4 too
        kind = "INT4/UINT4 QDQ"
    else:
        kind = "8-bit QDQ"
    if report.get("float_weights_for_float_convs"):
        kind += ", float weights for float convs"
    return f"{kind}, opset {report['opset']}, {report['onnx_bytes'] / 1e6:.1f} MB"


def _worst_layer(report):
    diffs = report["layer_max_abs_diff"].values()
    worst = max(diffs, key=lambda d: d["layer"] / max(d["max_abs_output"], 1e-12))
    return f"{worst['layer']:.1e} (of {worst['max_abs_output']:.2g})"


def parity_rows(paths):
    """One table row per report path, in the given order."""
    rows = []
    for path in paths:
        report = read_report(path)
        ap = report["ap"]
        kept = sum(1 for row in report["log"] if row["BN"].startswith("kept"))
        folded = sum(1 for row in report["log"] if row["BN"].startswith("folded"))
        md = os.path.splitext(path)[0] + ".md"
        name = os.path.basename(os.path.splitext(os.path.splitext(path)[0])[0])
        rows.append([f"[{name}]({md})", _onnx_kind(report), f"{ap['pytorch']['AP']:.2f}",
                     f"{ap['onnxruntime']['AP']:.2f}", f"{ap['delta_AP']:+.2f}".replace("-", "−"),
                     _worst_layer(report), f"{folded} / {kept}", f"`{report['command']}`"])
    return rows


def parity_table(paths):
    """The markdown table of `parity_rows`."""
    return tabulate(parity_rows(paths), headers=COLUMNS, tablefmt="pipe", disable_numparse=True)


def replace_section(readme, body):
    """Write `body` between this table's markers in `readme`."""
    replace_marked_section(readme, BEGIN, END, body)
