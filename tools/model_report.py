#!/usr/bin/env python
"""Size and BOPs of a (quantized) detector, per layer and total, from its config.

    python tools/model_report.py --config-file configs/digits/quant/fcos_R_18_FPN_FullBN_w4a4_lsq.yaml
    python tools/model_report.py --config-file CFG --size 800 --totals-only --out report.md

Parameters, weight bits, activation bits, size in MB at the trained bit widths vs FP32, MACs and
BOPs (MACs x weight bits x activation bits) per image of --size x --size (default the config's
INPUT.MIN_SIZE_TEST). Only the architecture and bit widths matter: no checkpoint is loaded.
Conventions: quant_det/export/report.py.
"""
import argparse
import sys

from quant_det.export.detector import load_cfg
from quant_det.export.report import format_report, model_report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--size", type=int, default=None, help="square image side (default MIN_SIZE_TEST)")
    p.add_argument("--totals-only", action="store_true")
    p.add_argument("--out", default=None, help="also write the report to this file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    from quant_det.engine.trainer import Trainer

    cfg = load_cfg(args.config_file, list(args.opts) + ["MODEL.WEIGHTS", ""])
    model = Trainer.build_model(cfg)
    rows, total = model_report(model, args.size or cfg.INPUT.MIN_SIZE_TEST)
    text = f"# Model report: {args.config_file}\n\n" + format_report(rows, total, not args.totals_only)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
