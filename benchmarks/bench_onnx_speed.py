#!/usr/bin/env python
"""W8A8 QDQ model vs FP32 model in onnxruntime (CPU), same detector, same images; prints the ratio.

    python benchmarks/bench_onnx_speed.py                              # FCOS-R18 Full-BN, 128x128
    python benchmarks/bench_onnx_speed.py --weights fcos_w8a8.pth --size 512 --rounds 15

The FP32 model is the same detector with BN folded and no quantizer; the W8A8 model is the LSQ
W8A8 export (8-bit QDQ, INT32 biases, predictors quantized), the 4-bit one the W4A4 INT4 export.
`--float-weights` adds the W8A8 export whose convs without an integer kernel keep float weights,
`--float-predictors` the W8A8 model with the QAT recipe's float predictors. Without --weights
the detector has random weights and its quantizers are calibrated on a few random images: speed
does not depend on the values. Timing: `--rounds` rounds, each running every model
`--runs` times back to back in turn (so load from other processes hits all models alike);
reported are the medians over rounds of wall time and of process CPU time per inference.
onnxruntime's optimized graphs say which convs run as integer kernels (QLinearConv) and which
stay float, and why (`--profile` adds onnxruntime's per-op-type time).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = "configs/digits/quant/fcos_R_18_FPN_FullBN_w8a8_ptq.yaml"


def build(config, weights, bits, calibrate_images, skip_predictors=False):
    """(cfg, eval model) with W`bits`A`bits` LSQ (None: float), calibrated if no weights given;
    `skip_predictors`: the head's prediction convs stay float (the low-bit QAT recipe)."""
    from detectron2.utils.events import EventStorage

    from quant_det.engine.calibrate import calibrate
    from quant_det.export.detector import load_detector

    opts = ["MODEL.QUANTIZATION.WEIGHT.BITS", bits or 8, "MODEL.QUANTIZATION.ACT.BITS", bits or 8,
            "MODEL.QUANTIZATION.POLICY", [], "MODEL.QUANTIZATION.SKIP_PREDICTORS", skip_predictors]
    if bits is None:
        opts += ["MODEL.QUANTIZATION.SCOPE", []]
    cfg, model = load_detector(os.path.join(REPO, config), weights, opts)
    if not weights and bits is not None:
        from detectron2.structures import Boxes, Instances

        def example(img):
            inst = Instances(img.shape[1:])
            inst.gt_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 48.0], [50.0, 60.0, 90.0, 100.0]]))
            inst.gt_classes = torch.tensor([1, 2])
            return {"image": img, "instances": inst, "height": img.shape[1], "width": img.shape[2]}

        batches = [[example(a), example(b)] for a, b in zip(calibrate_images[::2], calibrate_images[1::2])]
        model.train()
        with EventStorage(0):
            calibrate(model, batches, len(batches))
        model.eval()
    return cfg, model


def graph_summary(onnx_path, threads):
    """Optimize with onnxruntime (level ALL) and count integer vs float convs, with reasons."""
    import onnx

    from quant_det.export.detector import session

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = out
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        graph = onnx.load(out).graph
    del session
    counts = {}
    for n in graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    reasons = {}
    for n in graph.node:
        if n.op_type not in ("Conv", "FusedConv"):
            continue
        inputs_dq = all(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                        for i in n.input[:2])
        users = consumers.get(n.output[0], [])
        if not inputs_dq:
            why = "input or weight not from DequantizeLinear (float layer)"
        elif n.output[0] in outputs or not users:
            why = "output is a graph output (head predictor: no output quantizer)"
        elif any(u.op_type != "QuantizeLinear" for u in users):
            why = "output not quantized: feeds " + "/".join(sorted({u.op_type for u in users}))
        elif len(users) > 1:
            why = "output feeds several QuantizeLinear (different scales; fusion needs one)"
        else:
            why = "other"
        reasons[why] = reasons.get(why, 0) + 1
    return counts, reasons


def profile_ops(onnx_path, feed, threads, runs=5):
    """onnxruntime profiling: {op_type: total us} over `runs` inferences."""
    from quant_det.export.detector import session

    sess = session(onnx_path, threads=threads, profile=True)
    for _ in range(runs):
        sess.run(None, feed)
    path = sess.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    totals = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            if op == "DequantizeLinear":  # weights of convs left float are dequantized every run
                op += " (weights)" if "weight_dequantize" in e["name"] else " (activations)"
            totals[op] = totals.get(op, 0) + e["dur"]
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument("--weights", default=None, help="FP32 or calibrated checkpoint (default: random)")
    p.add_argument("--size", type=int, default=128, help="square input side")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--runs", type=int, default=10, help="inferences per model per round")
    p.add_argument("--no-int4", action="store_true", help="skip the W4A4 INT4 model")
    p.add_argument("--float-predictors", action="store_true",
                   help="also time a W8A8 model whose prediction convs stay float (SKIP_PREDICTORS, "
                        "the low-bit QAT recipe); the W8A8 model quantizes them, as 8-bit PTQ does")
    p.add_argument("--float-weights", action="store_true",
                   help="also time the W8A8 export whose convs without an integer kernel keep float "
                        "weights (export_onnx.py --float-weights-for-float-convs)")
    p.add_argument("--profile", action="store_true", help="also print onnxruntime's per-op time")
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(max(args.threads, 1))
    from quant_det.export.detector import export_detector, session

    g = torch.Generator().manual_seed(0)
    calib = [torch.rand(3, args.size, args.size, generator=g) * 255 for _ in range(4)]
    images = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    feed = {"images": images.numpy()}
    tmp = tempfile.mkdtemp(prefix="bench_onnx_")
    models = {}
    variants = [("FP32", None, False, False), ("W8A8", 8, False, False)]
    variants += [("W8A8 float-W", 8, False, True)] if args.float_weights else []
    variants += [("W8A8 float-pred", 8, True, False)] if args.float_predictors else []
    variants += [] if args.no_int4 else [("W4A4 INT4", 4, False, False)]
    for name, bits, skip, float_weights in variants:
        cfg, model = build(args.config_file, args.weights, bits, calib, skip)
        path = os.path.join(tmp, name.replace(" ", "_") + ".onnx")
        export_detector(model, path, example=images[:1], float_weights_for_float_convs=float_weights)
        models[name] = path
    sessions = {name: session(path, threads=args.threads) for name, path in models.items()}
    for s in sessions.values():  # warm-up
        s.run(None, feed)
    wall = {n: [] for n in sessions}
    cpu = {n: [] for n in sessions}
    for _ in range(args.rounds):
        for name, s in sessions.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.runs):
                s.run(None, feed)
            wall[name].append((time.perf_counter() - w0) / args.runs * 1e3)
            cpu[name].append((time.process_time() - c0) / args.runs * 1e3)
    load = os.getloadavg()
    result = {"config": args.config_file, "weights": args.weights, "size": args.size,
              "batch": args.batch, "threads": args.threads, "rounds": args.rounds,
              "runs": args.runs, "loadavg": load, "models": {}}
    print(f"onnxruntime CPU, {args.threads} thread(s), batch {args.batch} x {args.size}x{args.size}, "
          f"median of {args.rounds} rounds x {args.runs} runs; load average {load[0]:.1f} "
          f"(other processes share the {os.cpu_count()} cores: CPU time is the steadier number)")
    print(f"{'model':16s} {'wall ms':>9s} {'CPU ms':>9s}  integer convs / float convs (why float)")
    for name in sessions:
        counts, reasons = graph_summary(models[name], args.threads)
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        qconv = counts.get("QLinearConv", 0)
        fconv = counts.get("Conv", 0) + counts.get("FusedConv", 0)
        result["models"][name] = {"wall_ms": w, "cpu_ms": c, "QLinearConv": qconv, "float_conv": fconv,
                                  "float_conv_reasons": reasons, "onnx_bytes": os.path.getsize(models[name])}
        why = "; ".join(f"{v}: {k}" for k, v in reasons.items())
        print(f"{name:16s} {w:9.2f} {c:9.2f}  {qconv} / {fconv}" + (f" ({why})" if why else ""))
        if args.profile:
            prof = profile_ops(models[name], feed, args.threads)
            result["models"][name]["profile_us"] = prof
            print("    " + ", ".join(f"{k} {v / 1e3:.1f} ms" for k, v in list(prof.items())[:8]))
    fp32 = result["models"]["FP32"]
    for name in sessions:
        if name == "FP32":
            continue
        m = result["models"][name]
        m["speedup_wall"] = fp32["wall_ms"] / m["wall_ms"]
        m["speedup_cpu"] = fp32["cpu_ms"] / m["cpu_ms"]
        print(f"FP32 / {name}: {m['speedup_wall']:.2f}x wall, {m['speedup_cpu']:.2f}x CPU time")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
