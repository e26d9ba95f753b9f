#!/usr/bin/env python
"""Print (or write into README) the ablation table of a run set: each quantized row's AP against
its control and its parent, from the finished rows' run.json.

    python tools/ablation_table.py experiments/lowbit.yaml --readme README.md
"""
import argparse
import sys

from quant_det.experiments.ablation import ablation_table, replace_section


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_set", help="run-set yaml (rows with meta.control are tabulated)")
    parser.add_argument("--root", help="its output root (default: the file's 'root')")
    parser.add_argument("--readme", help="write the table between this file's "
                        "'<!-- ablation:NAME:begin/end -->' markers instead of printing it")
    parser.add_argument("--name", default="lowbit", help="NAME of those markers")
    args = parser.parse_args(argv)
    try:
        table = ablation_table(args.run_set, args.root)
        if args.readme:
            replace_section(args.readme, args.name, table)
            print(f"wrote the {args.name} ablation table into {args.readme}")
        else:
            print(table)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
