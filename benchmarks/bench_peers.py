#!/usr/bin/env python
"""W4A4 QAT train step of quant_det and of the peer QAT libraries, as ratios to the FP32 step.

Models: torchvision ResNet-18 (1000 classes, cross-entropy on fixed labels; every Conv2d/Linear
quantized) and the digits RetinaNet-R18 detector with its ResNet-18 backbone
(`backbone.bottom_up`) quantized, the whole detector trained. Batch 8x3x128x128, SGD momentum 0.9.

Rows (W4A4 per tensor: quant_det LSQ, torch.ao FakeQuantize and _LearnableFakeQuantize, torchao,
brevitas, NNCF): the adapters and their settings are described in benchmarks/peers.py; a peer that
is not installed, or cannot wrap a model, is skipped with a note. `pip install -e .[bench]`
installs all four.

Each (model, row) runs in its own process, which also builds the FP32 model from the same seed and
alternates FP32 and quantized steps (`--warmup` each, then `--steps` pairs); the ratio is the
median over pairs of quantized CPU time (`time.process_time`) over the FP32 step's. Wall ratios are
printed beside them. NNCF compiles its CPU kernels on first use (~50 s, cached in ~/.cache).

    python benchmarks/bench_peers.py [--steps 8] [--warmup 3] [--threads 1] [--readme README.md] [--note TEXT]
    python benchmarks/bench_peers.py --tiny     # test-suite mode: tiny tensors, 1 step, one process per model

Writes benchmarks/results/peers.json (or --json PATH); --readme renders the table into the
README's `bench:peers` block.
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (RESULTS, REPO, clocks, elapsed, machine, machine_line, markdown_table, median,  # noqa: E402
                    render_into, write_json)
from peers import OURS, ROWS, available, quantize, versions  # noqa: E402

MODELS = {"resnet18": "torchvision ResNet-18", "retinanet": "RetinaNet-R18 (backbone quantized)"}


# ---- models --------------------------------------------------------------------------------------
def build_model(key, images, size):
    """(fp32 model in train mode, its quantized part (a submodule), loss function, example input of the part)."""
    import torch

    torch.manual_seed(0)
    if key == "resnet18":
        import torchvision
        model = torchvision.models.resnet18(num_classes=1000).train()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(images, 3, size, size, generator=g)
        y = torch.randint(0, 1000, (images,), generator=g)

        def loss(m):
            return torch.nn.functional.cross_entropy(m(x), y)

        return model, model, loss, x
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from conftest import load_cfg, make_batch
    from quant_det.engine.trainer import Trainer

    cfg = load_cfg("configs/digits/retinanet_R_18_FPN.yaml")
    model = Trainer.build_model(cfg).train()
    batch = make_batch(num_images=images, size=size)

    def loss(m):
        return sum(m(batch).values())

    example = torch.randn(images, 3, size, size)
    return model, model.backbone.bottom_up, loss, example




# ---- measurement ---------------------------------------------------------------------------------


def measure_rows(model_key, rows, args):
    """In this process: FP32 and each row on `model_key`, FP32 and row steps alternating."""
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")  # its 60 s limit is shorter than its first build
    fp32, part, loss_fn, example = build_model(model_key, args.images, args.size)
    part_name = next(n for n, m in fp32.named_modules() if m is part)
    out = {}
    for row in rows:
        try:
            start = clocks()
            model = quantize(row, fp32, part_name, part, example)
            setup = elapsed(start)
        except Exception as e:  # a peer that cannot wrap this model: a note, not a failure
            out[row] = {"skipped": f"cannot wrap: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}",
                        "trace": traceback.format_exc()[-2000:]}
            continue
        models = {"FP32": copy.deepcopy(fp32), row: model}
        opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}
        times = {k: [] for k in models}
        from detectron2.utils.events import EventStorage
        with EventStorage(0):
            for i in range(args.warmup + args.steps):
                for k in (("FP32", row) if i % 2 == 0 else (row, "FP32")):
                    start = clocks()
                    loss = loss_fn(models[k])
                    opts[k].zero_grad()
                    loss.backward()
                    opts[k].step()
                    if i >= args.warmup:
                        times[k].append(elapsed(start))
        cpu = [t[0] for t in times[row]]
        wall = [t[1] for t in times[row]]
        fcpu = [t[0] for t in times["FP32"]]
        fwall = [t[1] for t in times["FP32"]]
        out[row] = {"cpu_ratio": median([a / b for a, b in zip(cpu, fcpu)]),
                    "wall_ratio": median([a / b for a, b in zip(wall, fwall)]),
                    "cpu_s": median(cpu), "wall_s": median(wall),
                    "fp32_cpu_s": median(fcpu), "fp32_wall_s": median(fwall),
                    "setup_cpu_s": setup[0], "setup_wall_s": setup[1]}
    return out


def run_child(args, model_key, rows):
    """measure_rows in a fresh process: {row: result}, or {row: {"skipped": note}} if it failed."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", model_key, "--rows", *rows,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--images", str(args.images), "--size", str(args.size)]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        note = f"process failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:] or ''}"
        return {row: {"skipped": note, "trace": proc.stderr[-2000:]} for row in rows}
    return json.loads(proc.stdout.strip().splitlines()[-1])




def target_line(results):
    """The markdown line saying whether quant_det's CPU ratio is below every measured peer's."""
    notes = []
    met = True
    for key, rows in results.items():
        ours = rows.get(OURS, {})
        if "cpu_ratio" not in ours:
            met = False
            notes.append(f"{MODELS[key]}: quant_det not measured")
            continue
        peers = {r: v["cpu_ratio"] for r, v in rows.items() if r != OURS and "cpu_ratio" in v}
        slower = [r for r, v in peers.items() if v <= ours["cpu_ratio"]]
        if slower:
            met = False
            notes.append(f"{MODELS[key]}: not below {', '.join(slower)}")
    text = ("quant_det's step ratio below every installed peer's on both models (CPU time): "
            f"**{'met' if met else 'not met'}**")
    return text + (f" ({'; '.join(notes)})" if notes else "") + "."


def render(data):
    """The markdown block (header line, table, target line) for README's bench:peers block."""
    results = data["results"]
    models = list(results)
    header = ["QAT implementation (W4A4 per tensor)"] + [f"{MODELS[m]}: step / FP32, CPU (wall)" for m in models]
    rows = []
    for row in data["rows"]:
        version = data.get("versions", {}).get(row)
        cells = [f"{row} ({ROWS[row]} {version})" if version and row != OURS else row]
        for m in models:
            r = results[m].get(row, {"skipped": "not run"})
            cells.append(f"skipped: {r['skipped']}" if "skipped" in r else f"{r['cpu_ratio']:.2f}x ({r['wall_ratio']:.2f}x)")
        rows.append(cells)
    fp32 = []
    for m in models:
        ref = results[m].get(OURS) or next((v for v in results[m].values() if "fp32_cpu_s" in v), None)
        if ref:
            fp32.append(f"{MODELS[m]} {ref['fp32_cpu_s']:.3f} s CPU ({ref['fp32_wall_s']:.3f} s wall)")
    cfg = data["config"]
    lines = [f"`{data['command']}`: {machine_line(data['machine'])}. Batch {cfg['images']}x3x{cfg['size']}x"
             f"{cfg['size']}, SGD, median of {cfg['steps']} FP32/QAT step pairs after {cfg['warmup']} warm-up, "
             f"{'one process per model' if cfg.get('tiny') else 'each row in its own process'}, each row with "
             f"its own FP32 reference. FP32 step: {'; '.join(fp32)}.",
             "", markdown_table(header, rows), "", target_line(results)]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--tiny", action="store_true", help="1 step on tiny inputs, one process per model")
    p.add_argument("--missing", nargs="*", default=[],
                   help="treat these peers (module or row names) as not installed, to check the skip path")
    p.add_argument("--json", default=None, help="default benchmarks/results/peers[_tiny].json")
    p.add_argument("--readme", nargs="?", const=os.path.join(REPO, "README.md"), default=None,
                   help="render the table into this README's bench:peers block")
    p.add_argument("--note", default="", help="text about the machine's load, shown with the numbers")
    p.add_argument("--child", choices=list(MODELS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure_rows(args.child, args.rows, args)))
        return None
    if args.tiny:
        args.steps, args.warmup, args.images, args.size = 1, 1, 2, 64
    info = machine(args.note)
    info["threads"] = args.threads  # what the measuring processes use
    results = {}
    for key in args.models:
        rows = [r for r in args.rows if available(r, args.missing)]
        results[key] = {r: {"skipped": "not installed (pip install -e .[bench])"} for r in args.rows if r not in rows}
        print(f"[{MODELS[key]}] {', '.join(rows)}", flush=True)
        groups = [rows] if args.tiny else [[r] for r in rows]
        for group in groups:
            results[key].update(run_child(args, key, group))
    command = "python benchmarks/bench_peers.py" + (" --tiny" if args.tiny else "")
    data = {"machine": info, "command": command, "rows": args.rows, "results": results,
            "versions": {r: v for r, v in versions().items() if available(r, args.missing)},
            "config": {"steps": args.steps, "warmup": args.warmup, "threads": args.threads, "tiny": args.tiny,
                       "images": args.images, "size": args.size, "models": args.models}}
    data["markdown"] = render(data)
    path = args.json or os.path.join(RESULTS, "peers_tiny.json" if args.tiny else "peers.json")
    write_json(path, data)
    print(data["markdown"])
    print(f"\nwrote {path}")
    if args.readme:
        render_into(args.readme, "peers", data["markdown"])
        print(f"rendered into {args.readme}")
    return data


if __name__ == "__main__":
    main()
