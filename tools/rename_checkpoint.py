#!/usr/bin/env python
"""Rename a classification checkpoint's keys into a detectron2 MODEL.WEIGHTS file.

Examples:
  # torchvision ResNet-50 -> backbone of an FPN detector (RetinaNet/FCOS)
  tools/rename_checkpoint.py resnet50.pth R-50.pth --rules torchvision-resnet \
      --prefix backbone.bottom_up.
  # the original model-quantization project's low-bit ResNet-18, previewed only
  tools/rename_checkpoint.py lsq_a2w2.pth --rules model-quantization-resnet --dry-run
  # ... with its quantizer values converted into ours (LSQ-native 2-bit per-channel weights,
  # LSQ 2-bit activations); what cannot be converted exactly is listed with the reason
  tools/rename_checkpoint.py lsq_a2w2.pth R-18-w2a2.pth --rules model-quantization-resnet \
      --convert-quantizers --weight-method lsq-native --weight-bits 2 --weight-per-channel \
      --act-method lsq --act-bits 2
  # paired mapping files (brace expansion allowed) and extra anchored regexes
  tools/rename_checkpoint.py in.pth out.pth --mf from.txt --mt to.txt --rule 'head\.(.*)=>fcos.\1'
"""
import argparse
import sys

from quant_det.porting.quantizer_values import OUR_TARGETS, THEIR_METHODS, SourceQuantizer
from quant_det.porting.rename import format_report, rename_checkpoint
from quant_det.porting.rules import RULE_SETS

RANGES = {"signed": True, "unsigned": False}


def add_quantizer_options(p):
    g = p.add_argument_group(
        "quantizer values (model-quantization checkpoints; the original run's settings, which its "
        "checkpoint does not store)")
    g.add_argument("--convert-quantizers", action="store_true",
                   help="convert their clip_val/basis into our quantizer state where exact")
    for role, name, tag in (("weight", "weight", "wt"), ("act", "activation", "fm")):
        g.add_argument(f"--{role}-method", choices=THEIR_METHODS[role], help=f"their {name} method")
        g.add_argument(f"--{role}-bits", type=int, help=f"their {tag}_bit")
        g.add_argument(f"--{role}-levels", type=int, default=0, help=f"their {tag}_level (0: 2**bits)")
        g.add_argument(f"--{role}-range", choices=sorted(RANGES),
                       help=f"their {name} grid, i.e. not their {tag}_half_range (default as theirs: "
                            f"{'signed' if role == 'weight' else 'unsigned'}; lqnet reads it from its codes)")
        g.add_argument(f"--{role}-target", choices=OUR_TARGETS[role], default="",
                       help="our method to convert into (default: the same method; lsq-native -> lsq)")
    g.add_argument("--weight-per-channel", action="store_true",
                   help="our weight quantizers are per channel (MODEL.QUANTIZATION.WEIGHT.PER_CHANNEL)")


def quantizer_sources(p, args):
    """{"weight"/"act": SourceQuantizer} from the options, or None without --convert-quantizers."""
    roles = [r for r in ("weight", "act") if getattr(args, f"{r}_method")]
    if not args.convert_quantizers:
        if roles:
            p.error(f"--{roles[0]}-method needs --convert-quantizers")
        return None
    if not roles:
        p.error("--convert-quantizers needs --weight-method and/or --act-method")
    sources = {}
    for r in roles:
        if getattr(args, f"{r}_bits") is None:
            p.error(f"--{r}-method needs --{r}-bits")
        signed = RANGES.get(getattr(args, f"{r}_range"))
        sources[r] = SourceQuantizer(getattr(args, f"{r}_method"), getattr(args, f"{r}_bits"),
                                     getattr(args, f"{r}_levels"), signed, getattr(args, f"{r}_target"),
                                     per_channel=r == "weight" and args.weight_per_channel)
    return sources


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
    add_quantizer_options(p)
    args = p.parse_args(argv)
    args.quantizer_sources = quantizer_sources(p, args)
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
            quantizer_sources=args.quantizer_sources,
        )
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(result))
    print("dry run: nothing written" if args.dry_run else f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
