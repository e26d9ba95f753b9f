#!/usr/bin/env python
"""RetinaNet-R18 train-step time and peak memory of W4A4 LSQ (backbone+head) as ratios to FP32.

Each variant runs in its own subprocess (so peak RSS is its own) on the same synthetic batch of
8 images of 128x128 (the digits-det config), after warm-up; prints medians and the ratios.
Targets (issue "Quantization core"): time <= 1.25x, memory <= 1.3x.

    python benchmarks/bench_qat_step.py [--steps 10] [--threads 2]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/digits/retinanet_R_18_FPN.yaml"
W4A4 = ["MODEL.QUANTIZATION.SCOPE", ["backbone.bottom_up", "head"],
        "MODEL.QUANTIZATION.WEIGHT.METHOD", "lsq", "MODEL.QUANTIZATION.ACT.METHOD", "lsq",
        "MODEL.QUANTIZATION.WEIGHT.BITS", 4, "MODEL.QUANTIZATION.ACT.BITS", 4]


def measure(quantized: bool, steps: int, threads: int) -> dict:
    """Run in the child: build the model, time `steps` SGD steps; return time and memory."""
    import torch
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from conftest import load_cfg, make_batch
    from quant_det.engine.trainer import Trainer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_cfg(CONFIG, *(W4A4 if quantized else []))
    model = Trainer.build_model(cfg)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batch = make_batch(num_images=8, size=128)
    from detectron2.utils.events import EventStorage
    times = []
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with EventStorage(0):
        for i in range(steps + 3):
            start = time.perf_counter()
            loss = sum(model(batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 3:  # warm-up (LSQ data-driven init happens on the first step)
                times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"step_s": statistics.median(times), "peak_mb": peak / 1024,
            "train_mb": (peak - base_rss) / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", choices=["fp32", "w4a4"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.child == "w4a4", args.steps, args.threads)))
        return
    res = {}
    for variant in ("fp32", "w4a4"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--steps",
                              str(args.steps), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True, cwd=REPO)
        res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    f, q = res["fp32"], res["w4a4"]
    print(f"RetinaNet-R18, batch 8x128x128, {args.threads} threads, median of {args.steps} steps")
    print(f"{'variant':8s} {'step s':>8s} {'peak RSS MB':>12s} {'train-step MB':>14s}")
    for name, r in res.items():
        print(f"{name:8s} {r['step_s']:8.3f} {r['peak_mb']:12.0f} {r['train_mb']:14.0f}")
    print(f"ratio W4A4/FP32: time {q['step_s'] / f['step_s']:.2f}x (target <= 1.25x), "
          f"peak memory {q['peak_mb'] / f['peak_mb']:.2f}x (target <= 1.3x), "
          f"train-step memory {q['train_mb'] / max(f['train_mb'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
