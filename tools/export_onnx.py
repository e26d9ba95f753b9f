#!/usr/bin/env python
"""Export a (quantized) RetinaNet/FCOS to ONNX with real QuantizeLinear/DequantizeLinear, and
check it in onnxruntime.

    python tools/export_onnx.py --config-file configs/digits/quant/fcos_R_18_FPN_FullBN_w4a4_lsq.yaml \\
        --weights output/digits/fcos_R_18_FPN_FullBN_w4a4_lsq/model_final.pth --output fcos_w4a4.onnx
    # + --check-ap: AP of PyTorch vs onnxruntime on DATASETS.TEST (digits-det val: 300 images)
    # --no-int4: 4 bits and below as 8-bit QDQ + Clip (opset 17) for runtimes without INT4
    # --part backbone: ResNet + FPN only; --no-fold-bn: keep BatchNorm nodes
    # --positive-weight-scales: no negative DequantizeLinear scales from BN folding

Prints (and writes next to the .onnx as <name>.export.md / .json) the per-layer export log
(what each layer's input and weight became, BN folded or why kept), the node counts, the
per-layer max |PyTorch - onnxruntime| on a val batch, and with --check-ap both APs.
Needs the `export` extra (pip install -e ".[export]").
"""
import argparse
import json
import logging
import os
import shlex
import sys
import time

import torch
from tabulate import tabulate


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", default=None, help="checkpoint (default: MODEL.WEIGHTS of the config)")
    p.add_argument("--output", default=None, help="the .onnx to write (default: <OUTPUT_DIR>/model.onnx)")
    p.add_argument("--part", choices=["detector", "backbone"], default="detector")
    p.add_argument("--no-int4", action="store_true",
                   help="store every grid in INT8/UINT8 (narrower grids clipped), opset 17")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm as separate nodes")
    p.add_argument("--positive-weight-scales", action="store_true",
                   help="fold a negative BN gain by negating integer codes, not into a negative "
                        "weight scale; BN stays where a negated code does not fit (for runtimes "
                        "that reject negative scales)")
    p.add_argument("--float-weights-for-float-convs", action="store_true",
                   help="8-bit convs that onnxruntime cannot run as integer kernels (output into an "
                        "Add, several quantizers, a float layer, or a graph output) store their weights "
                        "dequantized: same weight values, FP32 speed for those convs, a larger file")
    p.add_argument("--float-bias", action="store_true",
                   help="keep 8-bit layers' biases float (default INT32, as integer kernels need)")
    p.add_argument("--check-ap", action="store_true",
                   help="evaluate PyTorch and onnxruntime on DATASETS.TEST and compare AP")
    p.add_argument("--max-images", type=int, default=None, help="limit --check-ap to N images")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def val_batch(cfg, model, n=4):
    """The first `n` DATASETS.TEST images, preprocessed by the model (normalized, padded)."""
    import itertools

    from detectron2.data import build_detection_test_loader

    from quant_det.data import register_datasets_for

    register_datasets_for(cfg)
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    inputs = [x[0] for x in itertools.islice(loader, n)]
    with torch.no_grad():
        return model.preprocess_image(inputs).tensor


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from quant_det.export.detector import (OnnxDetector, evaluate, export_detector, layer_differences,
                                           load_detector)
    from quant_det.export.onnx_graph import count_ops
    from quant_det.export.prepare import LOG_COLUMNS
    from quant_det.quantizers import require_initialized

    torch.set_num_threads(args.threads or torch.get_num_threads())
    cfg, model = load_detector(args.config_file, args.weights, args.opts)
    if cfg.MODEL.WEIGHTS:  # without weights: a smoke export of the random model, ranges unset
        require_initialized(model, cfg.MODEL.WEIGHTS)
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "model.onnx")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    try:
        images = val_batch(cfg, model)
        source = f"{images.shape[0]} {cfg.DATASETS.TEST[0]} images"
    except Exception as e:  # no data set registered/buildable: random images
        images = torch.randn(2, 3, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)
        source = f"2 random images ({type(e).__name__}: {e})"
    start = time.time()
    result = export_detector(model, output, part=args.part, int4=not args.no_int4,
                             fold_bn=not args.no_fold_bn, int_bias=not args.float_bias,
                             example=images[:1], positive_scales=args.positive_weight_scales,
                             float_weights_for_float_convs=args.float_weights_for_float_convs)
    report = {"command": shlex.join(["python", "tools/export_onnx.py"] + argv),
              "config": args.config_file, "weights": cfg.MODEL.WEIGHTS, "onnx": output,
              "part": args.part, "int4": not args.no_int4, "fold_bn": not args.no_fold_bn,
              "positive_weight_scales": args.positive_weight_scales,
              "float_weights_for_float_convs": args.float_weights_for_float_convs,
              "export_seconds": round(time.time() - start, 1),
              "onnx_bytes": os.path.getsize(output), "nodes": count_ops(result.proto),
              "opset": max(i.version for i in result.proto.opset_import if i.domain in ("", "ai.onnx")),
              "log": [dict(zip(LOG_COLUMNS, r)) for r in result.log]}
    text = [f"# ONNX export of {args.config_file}", "",
            f"- weights: {cfg.MODEL.WEIGHTS or '(none: random init)'}",
            f"- output: {output} ({report['onnx_bytes'] / 1e6:.2f} MB, opset {report['opset']}, "
            f"{report['export_seconds']} s)",
            "- nodes: " + ", ".join(f"{k} {v}" for k, v in sorted(report["nodes"].items())), "",
            "## Per-layer export log", "", tabulate(result.log, headers=LOG_COLUMNS, tablefmt="pipe"), ""]
    not_qdq = [r[0] for r in result.log if "NOT QDQ" in r[2] + r[3]]
    bn_kept = [r[0] for r in result.log if r[4].startswith("kept")]
    floats = [r[0] for r in result.log if r[2] == "float" or r[3] == "float"]
    text += [f"- {len(result.log)} layers; not QDQ (level sets): {len(not_qdq)}"
             + (f" ({', '.join(not_qdq)})" if not_qdq else ""),
             f"- float input or weight (outside SCOPE / SKIP / 32-bit POLICY): {len(floats)}"
             + (f" ({', '.join(floats)})" if floats else ""),
             f"- BatchNorm kept: {len(bn_kept)}" + (f" ({', '.join(bn_kept)})" if bn_kept else ""), ""]
    report["summary"] = {"not_qdq": not_qdq, "float": floats, "bn_kept": bn_kept}
    rows = layer_differences(result, images)
    report["layer_max_abs_diff"] = {r[0]: {"layer": r[2], "accumulated": r[3], "max_abs_output": r[4]}
                                    for r in rows}
    worst = max(rows, key=lambda r: r[2] / max(r[4], 1e-12))
    text += [f"## Per-layer max |PyTorch - onnxruntime| ({source})", "",
             "PyTorch: the export-form model (BN folded, same integer codes and scales). "
             "\"layer\": that layer alone, on onnxruntime's input of it; \"accumulated\": the "
             "whole model (a last-bit difference of a convolution can flip a later rounding, and "
             "flips propagate).", "",
             tabulate([[r[0], r[1], f"{r[2]:.3g}", f"{r[3]:.3g}", f"{r[4]:.3g}"] for r in rows],
                      headers=["layer", "calls", "layer", "accumulated", "max |output|"],
                      tablefmt="pipe", disable_numparse=True), "",
             f"Largest single-layer difference relative to its output: {worst[0]} "
             f"({worst[2]:.3g} of {worst[4]:.3g}).", ""]
    if args.check_ap:
        if args.part != "detector":
            sys.exit("--check-ap needs --part detector")
        t0 = time.time()
        ap_torch = evaluate(cfg, model, max_images=args.max_images)["bbox"]
        t1 = time.time()
        ap_ort = evaluate(cfg, OnnxDetector(model, output, threads=args.threads),
                          max_images=args.max_images)["bbox"]
        t2 = time.time()
        delta = ap_ort["AP"] - ap_torch["AP"]
        report["ap"] = {"pytorch": ap_torch, "onnxruntime": ap_ort, "delta_AP": delta,
                        "images": args.max_images or "all", "pytorch_s": round(t1 - t0, 1),
                        "onnxruntime_s": round(t2 - t1, 1)}
        text += ["## AP: PyTorch quantized evaluation vs onnxruntime", "",
                 tabulate([["PyTorch", f"{ap_torch['AP']:.2f}", f"{ap_torch['AP50']:.2f}", f"{ap_torch['AP75']:.2f}"],
                           ["onnxruntime", f"{ap_ort['AP']:.2f}", f"{ap_ort['AP50']:.2f}", f"{ap_ort['AP75']:.2f}"]],
                          headers=[cfg.DATASETS.TEST[0], "AP", "AP50", "AP75"], tablefmt="pipe"), "",
                 f"delta AP (onnxruntime - PyTorch): {delta:+.3f}", ""]
    base = os.path.splitext(output)[0]
    with open(base + ".export.md", "w") as f:
        f.write("\n".join(text))
    with open(base + ".export.json", "w") as f:
        json.dump(report, f, indent=1, default=float)
    print("\n".join(text))
    if args.check_ap and abs(report["ap"]["delta_AP"]) > 0.1:
        print(f"AP differs by more than 0.1: {report['ap']['delta_AP']:+.3f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
