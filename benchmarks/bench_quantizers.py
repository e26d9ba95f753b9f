"""Forward+backward time of every quantizer as a ratio to ReLU forward+backward on the same tensor.

Activation quantizers (4 bits) run on a 16x256x64x64 fp32 tensor; weight quantizers on a
256x256x3x3 weight, compared with ReLU on that weight. `torch.fake_quantize_per_tensor_affine` is
a reference row. Each repeat times ReLU and then every row on the same upstream gradient; the
table shows the median over repeats of the per-repeat ratio (robust to load from other
processes) and the median milliseconds.

Usage: python benchmarks/bench_quantizers.py [--repeats 7] [--threads 2]
"""
import argparse
import statistics
import time

import torch

from quant_det.quantizers import build_quantizer

ACT_ROWS = [("dorefa", 4), ("pact", 4), ("lsq", 4), ("lqnet", 4), ("none", 4)]
WEIGHT_ROWS = [("dorefa", 4), ("lsq", 4), ("lqnet", 4), ("xnor", 1), ("ternary", 2)]


def fwd_bwd_seconds(fn, x, grad):
    """Seconds for y = fn(x); y.backward(grad), parameters' grads cleared first."""
    x.grad = None
    start = time.perf_counter()
    fn(x).backward(grad)
    return time.perf_counter() - start


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
    """Median ratio to ReLU and median ms for every row on a random tensor of `shape`."""
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
        ratio = statistics.median(t / r for t, r in zip(times[label], relu))
        table.append((label, ratio, 1e3 * statistics.median(times[label])))
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def fake_quant(x):
        return torch.fake_quantize_per_tensor_affine(x, 1.0 / 15, 0, 0, 15)

    act_shape, weight_shape = (16, 256, 64, 64), (256, 256, 3, 3)
    act_rows = make_rows("act", ACT_ROWS, False, 1) + [("torch.fake_quantize_per_tensor_affine", fake_quant)]
    act = bench(act_shape, act_rows, args.repeats, args.warmup)
    weight_rows = make_rows("weight", WEIGHT_ROWS, False, 1)
    weight_rows += make_rows("weight", WEIGHT_ROWS[:3], True, weight_shape[0])
    weight = bench(weight_shape, weight_rows, args.repeats, args.warmup)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} repeats")
    for title, shape, table in (("activations", act_shape, act), ("weights", weight_shape, weight)):
        print(f"\n{title} {list(shape)} fp32, forward+backward")
        print(f"{'quantizer':42s} {'x ReLU':>8s} {'ms':>9s}")
        for label, ratio, ms in table:
            print(f"{label:42s} {ratio:8.2f} {ms:9.2f}")


if __name__ == "__main__":
    main()
