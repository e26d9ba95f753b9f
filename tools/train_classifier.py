#!/usr/bin/env python
"""Train the digit-crop ResNet-18 classifier: FP32 ("backbone_full"), or a low-bit QAT fine-tune
of it ("backbone_low") when --init is given. See quant_det/experiments/classifier.py.

Examples:
  tools/train_classifier.py --out output/digits/backbone_full
  tools/train_classifier.py --out output/digits/backbone_low_w2a2_lsq \
      --init output/digits/backbone_full/model_final.pth \
      --weight-method lsq --weight-bits 2 --act-method lsq --act-bits 2
  # then: tools/rename_checkpoint.py output/digits/backbone_low_w2a2_lsq/model_final.pth \
  #   output/digits/backbone_low_w2a2_lsq/detectron2.pth --rules torchvision-resnet --prefix backbone.bottom_up.
"""
import argparse
import json
import logging
import os
import sys

import torch

from quant_det.convert import QuantizationSpec
from quant_det.experiments.classifier import DEFAULTS, SCOPE, train_classifier
from quant_det.quantizers import methods_for


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (model_final.pth, metrics.json)")
    p.add_argument("--init", help="FP32 classifier model_final.pth to fine-tune; required for low-bit")
    p.add_argument("--epochs", type=int, help="default: %s (FP32) / %s (low-bit)" % (
        DEFAULTS["fp32"]["epochs"], DEFAULTS["quant"]["epochs"]))
    p.add_argument("--lr", type=float, help="default: %s (FP32) / %s (low-bit)" % (
        DEFAULTS["fp32"]["lr"], DEFAULTS["quant"]["lr"]))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=DEFAULTS["size"], help="crop side in pixels")
    p.add_argument("--root", help="digits-det directory (default: $QUANT_DET_DATASETS/digits_det "
                                  "or datasets/digits_det)")
    p.add_argument("--weight-method", default="none", choices=methods_for("weight"))
    p.add_argument("--weight-bits", type=int, default=4)
    p.add_argument("--act-method", default="none", choices=methods_for("act"))
    p.add_argument("--act-bits", type=int, default=4)
    p.add_argument("--per-channel", action="store_true", help="per-output-channel weight quantizers")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own, i.e. "
                                                "$OMP_NUM_THREADS or the number of cores)")
    args = p.parse_args(argv)
    low_bit = args.weight_method != "none" or args.act_method != "none"
    if low_bit != bool(args.init):
        p.error("--init and a --weight-method/--act-method other than none go together")
    if args.init and os.path.abspath(args.init) == os.path.abspath(os.path.join(args.out, "model_final.pth")):
        p.error("--out would overwrite the --init checkpoint")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = None
    if args.init:
        spec = QuantizationSpec(scope=SCOPE, weight_method=args.weight_method, weight_bits=args.weight_bits,
                                act_method=args.act_method, act_bits=args.act_bits,
                                per_channel=args.per_channel)
    defaults = DEFAULTS["quant" if spec else "fp32"]
    try:
        metrics = train_classifier(
            args.out, epochs=args.epochs if args.epochs is not None else defaults["epochs"],
            lr=args.lr if args.lr is not None else defaults["lr"], batch_size=args.batch_size,
            seed=args.seed, quant_spec=spec, init=args.init, root=args.root,
            size=args.size)
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: metrics[k] for k in ("train_acc", "val_acc", "epochs", "time_s")}))
    print(f"wrote {os.path.join(args.out, 'model_final.pth')} and metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
