#!/usr/bin/env python
"""Run the rows of an experiment set (skips finished rows, resumes interrupted ones).

    python tools/run_experiments.py experiments/digits.yaml [--only fcos_R18_fp32 ...]
"""
import argparse
import sys

from quant_det.data import register_digits_det
from quant_det.experiments.runner import load_run_set, run_set


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_set", help="run-set yaml, e.g. experiments/digits.yaml")
    p.add_argument("--only", nargs="+", help="names of the rows to run (default: all, in order)")
    args = p.parse_args(argv)
    try:
        load_run_set(args.run_set)  # a malformed file fails before digits-det is built
        register_digits_det()  # build digits-det once, before rows start in parallel
        run_set(args.run_set, only=args.only, log=lambda m: print(m, flush=True))
    except (ValueError, RuntimeError) as e:  # a malformed run set / run.json, or a failed row
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
