"""`make demo`: the low-bit recipe in miniature on digits-det, ending in a generated dashboard.

Runs the rows of experiments/demo.yaml under `root` (default output/demo, so that a fresh clone
really runs them; finished rows are skipped, interrupted ones resumed), prints their table, and
rebuilds `<root>/DASHBOARD.md` + `<root>/ap_vs_bits.png` from the runs with the dashboard
generator. The committed reference run of the same rows lives in experiments/demo/
(`python tools/demo.py --root experiments/demo`).
"""
import os
import shlex
import time

from tabulate import tabulate

from ..data import register_digits_det
from .dashboard import build
from .runner import run_set

DEMO_SET = "experiments/demo.yaml"
DEMO_ROOT = "output/demo"


def ap_table(records) -> str:
    """A small table of the rows: bbox AP/AP50/AP75 of detectors, top-1 of classifiers."""
    rows = []
    for r in records:
        meta, metrics = r.get("meta", {}), r["metrics"]
        if "bbox" in metrics:
            bbox = metrics["bbox"]
            scores = (f"AP {bbox['AP']:.1f}", f"{bbox['AP50']:.1f}", f"{bbox['AP75']:.1f}")
        else:
            scores = (f"top-1 {100 * metrics['classification']['val_acc']:.1f}%", "", "")
        rows.append((r["name"], meta.get("quant", ""), meta.get("bits", ""), meta.get("scope", ""))
                    + scores + (f"{r['wall_time_s'] / 60:.1f}",))
    return tabulate(rows, headers=["run", "quantization", "A/W bits", "scope", "val score", "AP50",
                                   "AP75", "min"], tablefmt="pipe")


def main(run_set_path=DEMO_SET, root=DEMO_ROOT):
    """Run the demo rows under `root`, print their table, write the dashboard; return the records."""
    start, root = time.time(), os.fspath(root)
    print("[demo] building digits-det (once) ...", flush=True)
    register_digits_det()
    records = run_set(run_set_path, root=root, log=lambda m: print(m, flush=True))
    print("\n" + ap_table(records))
    out = os.path.join(root, "DASHBOARD.md")
    command = shlex.join(["python", "tools/dashboard.py", "--roots", root, "--out", out,
                          "--readme", "", "--plot", os.path.join(root, "ap_vs_bits.png")])
    build([root], out, plot=os.path.join(root, "ap_vs_bits.png"), command=command,
          machine=f"{os.cpu_count()} CPU cores (os.cpu_count); the machine that ran `make demo`")
    print(f"\n[demo] done in {(time.time() - start) / 60:.1f} min; runs in {root}/, "
          f"dashboard {out} (regenerate: {command})")
    return records
