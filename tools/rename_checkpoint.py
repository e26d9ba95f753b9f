#!/usr/bin/env python
"""Rename a classification checkpoint's keys into a detectron2 MODEL.WEIGHTS file.

Examples:
  # torchvision ResNet-50 -> backbone of an FPN detector (RetinaNet/FCOS)
  tools/rename_checkpoint.py resnet50.pth R-50.pth --rules torchvision-resnet \
      --prefix backbone.bottom_up.
  # the original model-quantization project's low-bit ResNet-18, previewed only
  tools/rename_checkpoint.py lsq_a2w2.pth --rules model-quantization-resnet --dry-run
  # paired mapping files (brace expansion allowed) and extra anchored regexes
  tools/rename_checkpoint.py in.pth out.pth --mf from.txt --mt to.txt --rule 'head\.(.*)=>fcos.\1'
"""
import argparse
import sys

from quant_det.checkpoint.rename import format_report, rename_checkpoint
from quant_det.checkpoint.rules import RULE_SETS


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="checkpoint to rename (.pth/.pt/.pkl; {'model'|'state_dict': ...} or bare)")
    p.add_argument("output", nargs="?", help="detectron2 weights file to write (.pth); optional with --dry-run")
    p.add_argument("--rules", choices=sorted(RULE_SETS), help="built-in rule set, tried after user rules")
    p.add_argument("--prefix", default="", help="prepended to every renamed key, e.g. backbone.bottom_up.")
    p.add_argument("--mf", help="mapping file: one old key per line (pairs with --mt)")
    p.add_argument("--mt", help="mapping file: one new key per line (pairs with --mf)")
    p.add_argument("--rule", action="append", default=[], metavar="REGEX=>REPLACEMENT",
                   help="anchored regex rule (re.fullmatch); empty REPLACEMENT drops the key; repeatable")
    p.add_argument("--keep-unmatched", action="store_true", help="copy unconverted keys unchanged")
    p.add_argument("--dry-run", action="store_true", help="print the renaming, write nothing")
    p.add_argument("--force", action="store_true", help="overwrite an existing output (never the input)")
    p.add_argument("--unsafe-pickle", action="store_true",
                   help="torch.load with weights_only=False (only for files you trust)")
    args = p.parse_args(argv)
    if bool(args.mf) != bool(args.mt):
        p.error("--mf and --mt go together")
    if not args.dry_run and not args.output:
        p.error("output is required unless --dry-run")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = rename_checkpoint(
            args.input, args.output, rule_set=args.rules,
            mapping_files=[(args.mf, args.mt)] if args.mf else [], regex_rules=args.rule,
            prefix=args.prefix, keep_unmatched=args.keep_unmatched, dry_run=args.dry_run,
            force=args.force, unsafe_pickle=args.unsafe_pickle,
        )
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(result))
    print("dry run: nothing written" if args.dry_run else f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
