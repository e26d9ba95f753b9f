"""Forward+backward time of every quantizer as a ratio to ReLU forward+backward on the same tensor.

Activation quantizers (4 bits) run on a 16x256x64x64 fp32 tensor; weight quantizers on a
256x256x3x3 weight, compared with ReLU on that weight. `torch.fake_quantize_per_tensor_affine` is
a reference row. Each repeat times ReLU and then every row on the same upstream gradient; the
table shows the median over repeats of the per-repeat ratio of CPU time (`time.process_time`,
robust to load from other processes; wall-time ratios beside it) and the median milliseconds.
Target (issue 14): LQ-Net activations <= 1.5x ReLU.

Usage: python benchmarks/bench_quantizers.py [--repeats 7] [--threads 1] [--readme README.md] [--note TEXT]
       python benchmarks/bench_quantizers.py --tiny     # test-suite mode: small tensors, 1 repeat
Writes benchmarks/results/quantizers.json (or --json PATH); --readme renders the table into the
README's `bench:quantizers` block.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (RESULTS, REPO, clocks, elapsed, machine, machine_line, markdown_table, median,  # noqa: E402
                    render_into, write_json)
from quant_det.quantizers import build_quantizer  # noqa: E402

ACT_ROWS = [("dorefa", 4), ("pact", 4), ("lsq", 4), ("lqnet", 4), ("none", 4)]
WEIGHT_ROWS = [("dorefa", 4), ("lsq", 4), ("lqnet", 4), ("xnor", 1), ("ternary", 2)]


def fwd_bwd_seconds(fn, x, grad):
    """(CPU, wall) seconds for y = fn(x); y.backward(grad), parameters' grads cleared first."""
    x.grad = None
    start = clocks()
    fn(x).backward(grad)
    return elapsed(start)


def make_rows(role, rows, per_channel, channels):
    """[(label, callable)] for the given (method, bits), in training mode and initialized."""
    out = []
    for method, bits in rows:
        quantizer = build_quantizer(method, role, bits, per_channel=per_channel, num_channels=channels)
        quantizer.train()
        label = f"{method} {role} {bits}b" + (" per-channel" if per_channel else "")

        def run(x, q=quantizer):
            for p in q.parameters():
                p.grad = None
            return q(x)

        out.append((label, run))
    return out


def bench(shape, rows, repeats, warmup):
    """[(label, CPU ratio to ReLU, wall ratio, median CPU ms)] for every row on a random tensor."""
    x = torch.randn(shape).requires_grad_()
    grad = torch.randn(shape)
    rows = [("relu", torch.relu)] + rows
    for _, fn in rows:
        for _ in range(warmup):
            fwd_bwd_seconds(fn, x, grad)
    times = {label: [] for label, _ in rows}
    for _ in range(repeats):
        for label, fn in rows:
            times[label].append(fwd_bwd_seconds(fn, x, grad))
    relu = times["relu"]
    table = []
    for label, _ in rows:
        cpu = median([t[0] / r[0] for t, r in zip(times[label], relu)])
        wall = median([t[1] / r[1] for t, r in zip(times[label], relu)])
        table.append((label, cpu, wall, 1e3 * median([t[0] for t in times[label]])))
    return table


def render(data):
    lines = [f"`{data['command']}`: {machine_line(data['machine'])}; median of {data['repeats']} repeats."]
    for title, block in data["tables"].items():
        lines += ["", f"{title} {block['shape']} fp32, forward+backward:", "",
                  markdown_table(["quantizer", "x ReLU, CPU (wall)", "CPU ms"],
                                 [(label, f"{cpu:.2f}x ({wall:.2f}x)", f"{ms:.2f}")
                                  for label, cpu, wall, ms in block["rows"]])]
    lq = next(r for r in data["tables"]["activations"]["rows"] if r[0].startswith("lqnet"))
    met = "met" if lq[1] <= 1.5 else "not met"
    lines += ["", f"Target (LQ-Net activation quantizer <= 1.5x ReLU, CPU time): **{met}** ({lq[1]:.2f}x)."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="small tensors, 1 repeat")
    parser.add_argument("--json", default=None, help="default benchmarks/results/quantizers[_tiny].json")
    parser.add_argument("--readme", nargs="?", const=os.path.join(REPO, "README.md"), default=None,
                        help="render the tables into this README's bench:quantizers block")
    parser.add_argument("--note", default="", help="text about the machine's load, shown with the numbers")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def fake_quant(x):
        return torch.fake_quantize_per_tensor_affine(x, 1.0 / 15, 0, 0, 15)

    act_shape, weight_shape = (16, 256, 64, 64), (256, 256, 3, 3)
    if args.tiny:
        act_shape, weight_shape, args.repeats, args.warmup = (2, 16, 16, 16), (16, 16, 3, 3), 1, 1
    info = machine(args.note)
    act_rows = make_rows("act", ACT_ROWS, False, 1) + [("torch.fake_quantize_per_tensor_affine", fake_quant)]
    act = bench(act_shape, act_rows, args.repeats, args.warmup)
    weight_rows = make_rows("weight", WEIGHT_ROWS, False, 1)
    weight_rows += make_rows("weight", WEIGHT_ROWS[:3], True, weight_shape[0])
    weight = bench(weight_shape, weight_rows, args.repeats, args.warmup)
    command = "python benchmarks/bench_quantizers.py" + (" --tiny" if args.tiny else "")
    data = {"machine": info, "command": command, "repeats": args.repeats,
            "tables": {"activations": {"shape": list(act_shape), "rows": act},
                       "weights": {"shape": list(weight_shape), "rows": weight}}}
    data["markdown"] = render(data)
    path = args.json or os.path.join(RESULTS, "quantizers_tiny.json" if args.tiny else "quantizers.json")
    write_json(path, data)
    print(data["markdown"])
    print(f"\nwrote {path}")
    if args.readme:
        render_into(args.readme, "quantizers", data["markdown"])
        print(f"rendered into {args.readme}")
    return data


if __name__ == "__main__":
    main()
