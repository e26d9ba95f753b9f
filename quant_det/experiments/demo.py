"""`make demo`: build digits-det, run the rows of experiments/demo.yaml, print their AP table."""
import time

from tabulate import tabulate

from ..data import register_digits_det
from .runner import run_set

DEMO_SET = "experiments/demo.yaml"


def ap_table(records) -> str:
    """A small table of the runs' bbox AP/AP50/AP75 (numbers from their eval_results.json)."""
    rows = []
    for r in records:
        bbox, meta = r["metrics"]["bbox"], r.get("meta", {})
        rows.append((r["name"], meta.get("quant", ""), meta.get("bits", ""),
                     f"{bbox['AP']:.1f}", f"{bbox['AP50']:.1f}", f"{bbox['AP75']:.1f}",
                     f"{r['wall_time_s'] / 60:.1f}"))
    return tabulate(rows, headers=["run", "quantization", "A/W bits", "AP", "AP50", "AP75",
                                   "train+eval min"], tablefmt="pipe")


def main(run_set_path=DEMO_SET):
    start = time.time()
    print("[demo] building digits-det (once) ...", flush=True)
    register_digits_det()
    records = run_set(run_set_path, log=lambda m: print(m, flush=True))
    print("\n" + ap_table(records))
    print(f"\n[demo] done in {(time.time() - start) / 60:.1f} min; runs in experiments/demo/")
    return records
