#!/usr/bin/env python
"""QAT train-step time and peak memory of every quant_det method, as ratios to FP32, on
RetinaNet-R18 and FCOS-R18 (the digits configs: batch 8x3x128x128, SGD with momentum).

Variants: DoReFa, PACT (DoReFa weights), LSQ and LQ-Net at W4A4 and W2A2; XNOR (1-bit) and
ternary weights with LSQ 2-bit activations; LQ-Net ternary weights with LQ-Net 2-bit activations.
All quantize backbone (ResNet + FPN) and head with the first conv at 8 bits, as the sweep configs
(XNOR / ternary: first conv weights float, its input 8 bits).

Time: one process per detector builds FP32 and every variant from the same seed, runs `--warmup`
steps of each (data-driven inits happen there), then `--steps` rounds in which every model takes
one step (the order rotates each round); a variant's ratio is the median over rounds of its CPU
time (`time.process_time`) over FP32's in the same round; wall ratios are printed beside them.
Memory: one process per (detector, variant) runs 2 steps; peak RSS and the RSS added by the
training steps, as ratios to FP32's process. Target (issue 14): no method's step above 1.5x FP32
on RetinaNet-R18.

    python benchmarks/bench_qat_step.py [--steps 5] [--threads 2] [--readme README.md] [--note TEXT]
    python benchmarks/bench_qat_step.py --tiny          # test-suite mode: 64x64, 3 variants, 1 step

Writes benchmarks/results/qat_step.json (or --json PATH); --readme renders the table into the
README's `bench:qat_step` block.
"""
import argparse
import json
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (RESULTS, REPO, clocks, elapsed, machine, machine_line, markdown_table, median,  # noqa: E402
                    render_into, write_json)

MODELS = {"retinanet": ("RetinaNet-R18", "configs/digits/retinanet_R_18_FPN.yaml"),
          "fcos": ("FCOS-R18", "configs/digits/fcos_R_18_FPN.yaml")}
# name -> (weight method, weight bits, weight levels, act method, act bits); None = FP32
VARIANTS = {
    "FP32": None,
    "DoReFa W4A4": ("dorefa", 4, 0, "dorefa", 4),
    "PACT W4A4": ("dorefa", 4, 0, "pact", 4),
    "LSQ W4A4": ("lsq", 4, 0, "lsq", 4),
    "LQ-Net W4A4": ("lqnet", 4, 0, "lqnet", 4),
    "DoReFa W2A2": ("dorefa", 2, 0, "dorefa", 2),
    "PACT W2A2": ("dorefa", 2, 0, "pact", 2),
    "LSQ W2A2": ("lsq", 2, 0, "lsq", 2),
    "LQ-Net W2A2": ("lqnet", 2, 0, "lqnet", 2),
    "XNOR W1 + LSQ A2": ("xnor", 1, 0, "lsq", 2),
    "ternary W + LSQ A2": ("ternary", 2, 0, "lsq", 2),
    "LQ-Net ternary W + A2": ("lqnet", 2, 3, "lqnet", 2),
}
TINY_VARIANTS = ["FP32", "LSQ W4A4", "LQ-Net W2A2"]
TARGET = 1.5


def opts(variant):
    spec = VARIANTS[variant]
    if spec is None:
        return []
    wm, wb, wl, am, ab = spec
    stem_weight_bits = 32 if wm in ("xnor", "ternary") else 8  # these have one bit width only
    return ["MODEL.QUANTIZATION.SCOPE", ["backbone", "head"],
            "MODEL.QUANTIZATION.POLICY", [["backbone.bottom_up.stem.conv1", stem_weight_bits, 8]],
            "MODEL.QUANTIZATION.WEIGHT.METHOD", wm, "MODEL.QUANTIZATION.WEIGHT.BITS", wb,
            "MODEL.QUANTIZATION.WEIGHT.LEVELS", wl,
            "MODEL.QUANTIZATION.ACT.METHOD", am, "MODEL.QUANTIZATION.ACT.BITS", ab]


def build(model_key, variant):
    """(model in train mode, SGD optimizer), float weights from seed 0 for every variant."""
    import torch
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from conftest import load_cfg
    from quant_det.engine.trainer import Trainer

    torch.manual_seed(0)
    cfg = load_cfg(MODELS[model_key][1], *opts(variant))
    model = Trainer.build_model(cfg)
    model.train()
    return model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)


def step(model, opt, batch):
    loss = sum(model(batch).values())
    opt.zero_grad()
    loss.backward()
    opt.step()


def child_time(args):
    """All variants of one detector in this process, interleaved; CPU/wall seconds per step."""
    import torch
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from conftest import make_batch
    from detectron2.utils.events import EventStorage

    torch.set_num_threads(args.threads)
    batch = make_batch(num_images=args.images, size=args.size)
    models = {v: build(args.model, v) for v in args.variants}
    times = {v: [] for v in args.variants}
    with EventStorage(0):
        for v, (model, opt) in models.items():
            for _ in range(args.warmup):
                step(model, opt, batch)
        for r in range(args.steps):
            order = args.variants[r % len(args.variants):] + args.variants[:r % len(args.variants)]
            for v in order:
                start = clocks()
                step(*models[v], batch)
                times[v].append(elapsed(start))
    return {v: [list(t) for t in ts] for v, ts in times.items()}


def child_memory(args):
    """One variant in this process: peak RSS and the RSS added by two training steps (MB)."""
    import torch
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from conftest import make_batch
    from detectron2.utils.events import EventStorage

    torch.set_num_threads(args.threads)
    batch = make_batch(num_images=args.images, size=args.size)
    model, opt = build(args.model, args.variants[0])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with EventStorage(0):
        for _ in range(2):
            step(model, opt, batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mb": peak / 1024, "train_mb": (peak - base) / 1024}


def run_child(args, mode, model, variants):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--model", model,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--images", str(args.images), "--size", str(args.size), "--variants", *variants]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if out.returncode != 0:
        raise SystemExit(f"child {mode} {model} {variants} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(args):
    results = {}
    for model in args.models:
        print(f"[{MODELS[model][0]}] timing {len(args.variants)} variants in one process ...", flush=True)
        times = run_child(args, "time", model, args.variants)
        memory = {}
        for v in args.variants:
            print(f"[{MODELS[model][0]}] memory: {v}", flush=True)
            memory[v] = run_child(args, "memory", model, [v])
        fp_cpu = [t[0] for t in times["FP32"]]
        fp_wall = [t[1] for t in times["FP32"]]
        rows = {}
        for v in args.variants:
            cpu = [t[0] for t in times[v]]
            wall = [t[1] for t in times[v]]
            rows[v] = {
                "cpu_s": median(cpu), "wall_s": median(wall),
                "cpu_ratio": median([a / b for a, b in zip(cpu, fp_cpu)]),
                "wall_ratio": median([a / b for a, b in zip(wall, fp_wall)]),
                "peak_mb": memory[v]["peak_mb"], "train_mb": memory[v]["train_mb"],
                "peak_ratio": memory[v]["peak_mb"] / memory["FP32"]["peak_mb"],
                "train_mem_ratio": memory[v]["train_mb"] / max(memory["FP32"]["train_mb"], 1e-9),
            }
        results[model] = rows
    return results


def target_line(results):
    if "retinanet" not in results:
        return "Target (no method above 1.5x FP32 on RetinaNet-R18): not measured (RetinaNet not run)."
    rows = {v: r for v, r in results["retinanet"].items() if v != "FP32"}
    worst = max(rows, key=lambda v: rows[v]["cpu_ratio"])
    met = rows[worst]["cpu_ratio"] <= TARGET
    return (f"Target (no method's step above {TARGET}x FP32 on RetinaNet-R18, CPU time): "
            f"**{'met' if met else 'not met'}**; slowest {worst} at {rows[worst]['cpu_ratio']:.2f}x.")


def render(data):
    results = data["results"]
    models = list(results)
    header = ["variant"]
    for m in models:
        name = MODELS[m][0]
        header += [f"{name} step CPU (wall)", f"{name} peak mem (train-step mem)"]
    rows = []
    for v in data["variants"]:
        row = [v]
        for m in models:
            r = results[m][v]
            if v == "FP32":
                row += [f"{r['cpu_s']:.3f} s ({r['wall_s']:.3f} s)",
                        f"{r['peak_mb']:.0f} MB ({r['train_mb']:.0f} MB)"]
            else:
                row += [f"{r['cpu_ratio']:.2f}x ({r['wall_ratio']:.2f}x)",
                        f"{r['peak_ratio']:.2f}x ({r['train_mem_ratio']:.2f}x)"]
        rows.append(row)
    cfg = data["config"]
    lines = [f"`{data['command']}`: {machine_line(data['machine'])}. Batch {cfg['images']}x3x{cfg['size']}x"
             f"{cfg['size']}, SGD, median of {cfg['steps']} interleaved steps after {cfg['warmup']} warm-up; "
             "ratios to FP32 (CPU time, wall in parentheses; the FP32 row gives seconds and MB).",
             "", markdown_table(header, rows), "", target_line(results)]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--tiny", action="store_true", help="a few small steps, 3 variants, RetinaNet only")
    p.add_argument("--json", default=None, help="default benchmarks/results/qat_step[_tiny].json")
    p.add_argument("--readme", nargs="?", const=os.path.join(REPO, "README.md"), default=None,
                   help="render the table into this README's bench:qat_step block")
    p.add_argument("--note", default="", help="text about the machine's load, shown with the numbers")
    p.add_argument("--child", choices=["time", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        out = child_time(args) if args.child == "time" else child_memory(args)
        print(json.dumps(out))
        return None
    if args.tiny:
        args.models, args.steps, args.warmup, args.images, args.size = ["retinanet"], 1, 1, 2, 64
        args.variants = args.variants or TINY_VARIANTS
    args.variants = args.variants or list(VARIANTS)
    if "FP32" not in args.variants:
        args.variants = ["FP32"] + args.variants
    info = machine(args.note)
    info["threads"] = args.threads  # what the measuring processes use
    results = measure(args)
    command = "python benchmarks/bench_qat_step.py" + (" --tiny" if args.tiny else "")
    data = {"machine": info, "command": command, "variants": args.variants, "results": results,
            "config": {"steps": args.steps, "warmup": args.warmup, "threads": args.threads,
                       "images": args.images, "size": args.size, "models": args.models}}
    data["markdown"] = render(data)
    path = args.json or os.path.join(RESULTS, "qat_step_tiny.json" if args.tiny else "qat_step.json")
    write_json(path, data)
    print(data["markdown"])
    print(f"\nwrote {path}")
    if args.readme:
        render_into(args.readme, "qat_step", data["markdown"])
        print(f"rendered into {args.readme}")
    return data


if __name__ == "__main__":
    main()
