#!/usr/bin/env python
"""Rebuild DASHBOARD.md, the AP-vs-bits plot and README's dashboard section from finished runs.

    python tools/dashboard.py --roots experiments/lowbit experiments/digits experiments/demo --machine "2-core CPU"
"""
import argparse
import shlex
import sys

from quant_det.experiments.dashboard import build


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roots", nargs="+",
                        default=["experiments/lowbit", "experiments/digits", "experiments/demo"],
                        help="run-set roots to scan for <name>/run.json")
    parser.add_argument("--out", default="DASHBOARD.md")
    parser.add_argument("--readme", default="README.md",
                        help="file whose '<!-- dashboard:begin/end -->' section is replaced; "
                             "'' to skip")
    parser.add_argument("--plot", default="experiments/dashboard_ap_vs_bits.png", help="'' to skip")
    parser.add_argument("--machine", help="machine description written in the header")
    parser.add_argument("--reported", default="experiments/reported",
                        help="directory of the original's reported tables (*.yaml)")
    args = parser.parse_args(argv)
    try:
        done = build(args.roots, args.out, readme=args.readme or None, plot=args.plot or None,
                     machine=args.machine, reported_dir=args.reported,
                     command=shlex.join(["python", "tools/dashboard.py"] + list(argv)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {done['out']} ({len(done['runs'])} runs)"
          + (f", {done['plot']}" if done["plot"] else "")
          + (f", section of {done['readme']}" if done["readme"] else ""))
    for d in done["unfinished"]:
        print(f"not shown (no run.json): {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
