#!/usr/bin/env python
"""What quantizing each layer / group of a detector costs (output error, optionally bbox AP).

    python tools/sensitivity.py --config-file configs/digits/quant/fcos_R_18_FPN_FullBN_w2a2_lsq.yaml \
        --weights experiments/lowbit/fcos_w2a2_base/model_final.pth [--ap] [--num-images 32] [KEY VALUE ...]

Writes sensitivity.md (tables), sensitivity.json and sensitivity.png next to the weights (or --out).
A float checkpoint works too: its quantizers are calibrated on 20 training batches first.
"""
import argparse
import os

import torch
from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

from quant_det import modeling  # noqa: F401  (registers FCOS and the FPN-BN backbone)
from quant_det.analysis.detector import analyze
from quant_det.config import add_quant_det_config
from quant_det.convert import QuantizationSpec
from quant_det.data import register_datasets_for

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", help="checkpoint to analyze (default: MODEL.WEIGHTS of the config)")
    p.add_argument("--out", help="output folder (default: the folder of --weights)")
    p.add_argument("--num-images", type=int, default=32, help="validation images for the output error")
    p.add_argument("--ap", action="store_true", help="also evaluate bbox AP per group (2 evaluations a group)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args()
    setup_logger(name="quant_det")
    cfg = get_cfg()
    add_quant_det_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    weights = args.weights or cfg.MODEL.WEIGHTS
    if not weights or not os.path.isfile(weights):
        raise SystemExit(f"--weights {weights!r}: not a checkpoint file")
    if args.num_images < 1:
        raise SystemExit(f"--num-images {args.num_images}: must be >= 1")
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    QuantizationSpec.from_config(cfg)
    cfg.freeze()
    register_datasets_for(cfg)
    out = args.out or os.path.dirname(os.path.abspath(weights))
    analyze(cfg, weights, out, num_images=args.num_images, with_ap=args.ap)
    print(f"wrote {out}/sensitivity.md, sensitivity.json, sensitivity.png")
