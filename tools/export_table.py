#!/usr/bin/env python
"""Print (or write into README) the AP-parity table of ONNX exports from their reports
(`<name>.export.json`, written by `tools/export_onnx.py --check-ap`).

    python tools/export_table.py experiments/export/*.export.json --readme README.md
"""
import argparse
import sys

from quant_det.export.parity import parity_table, replace_section


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="<name>.export.json files, in table order")
    parser.add_argument("--readme", help="write the table between this file's "
                        "'<!-- export-parity:begin/end -->' markers instead of printing it")
    args = parser.parse_args(argv)
    try:
        table = parity_table(args.reports)
        if args.readme:
            replace_section(args.readme, table)
            print(f"wrote the parity table of {len(args.reports)} exports into {args.readme}")
        else:
            print(table)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
