#!/usr/bin/env python
"""Train, calibrate or evaluate a (quantized) RetinaNet/FCOS detector from a yacs config.

    python tools/train_net.py --config-file configs/digits/fcos_R_18_FPN.yaml
    python tools/train_net.py --config-file CFG --resume      # continue the run in OUTPUT_DIR
    python tools/train_net.py --config-file CFG --overwrite   # replace it (deletes it first)
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    torchrun --nproc_per_node 2 tools/train_net.py --config-file CFG   # multi-process (gloo on CPU)
"""
from quant_det.engine.run import argument_parser, main

if __name__ == "__main__":
    args = argument_parser().parse_args()
    if args.num_gpus > 1:
        raise SystemExit("--num-gpus > 1: start the processes with "
                         f"`torchrun --nproc_per_node {args.num_gpus} tools/train_net.py ...` instead")
    main(args)
