"""Size and cost of a (quantized) detector: per layer and total parameters, weight/activation bits,
model size in MB at the trained bit widths vs FP32, MACs and BOPs (MACs x weight bits x
activation bits), measured by one forward pass of a blank image of the test size.

    rows, total = model_report(model, image_size=128)
    print(format_report(rows, total))

Conventions (the same for every row of the dashboard):
  * weight bits: the weight quantizer's `bits` (LQ-Net: its code bits; XNOR 1; ternary 2, the
    bits a ternary code is stored in); a float layer, 32;
  * activation bits: the input quantizer's `bits`; a float input, 32;
  * size: every Conv/Linear weight at its weight bits, everything else that a deployed model
    keeps (biases, BatchNorm affine + statistics, quantizer steps) at 32 bits; MB = 10^6 bytes;
  * MACs per image of `image_size` x `image_size` (the digits-det test size, 128, by default),
    summed over every call (the head's shared convs run once per FPN level);
  * BOPs = sum over layers of MACs x weight bits x activation bits; an FP32 layer counts 32 x 32.
"""
import torch
from torch import nn

FLOAT_BITS = 32


def _bits(quantizer):
    if quantizer is None or quantizer.method == "none":
        return FLOAT_BITS
    return int(quantizer.bits)


def model_report(model, image_size=128, batch_input=None):
    """(rows, total) for every Conv2d/Linear of `model` (a detectron2 detector or any module).

    rows: dicts with layer, type, params, weight_bits, act_bits, macs, bops, size_bits.
    `batch_input`: what to call `model` with; default a blank image in detectron2's input format.
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    macs = {n: 0 for n, _ in layers}

    def hook(name):
        def count(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
                macs[name] += output.numel() // output.shape[0] * k
            else:
                macs[name] += output.numel() // output.shape[0] * module.in_features
        return count

    handles = [m.register_forward_hook(hook(n)) for n, m in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if batch_input is None:
                image = torch.zeros(3, image_size, image_size)
                batch_input = [{"image": image, "height": image_size, "width": image_size}]
            model(batch_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    rows, layer_params = [], set()
    for name, m in layers:
        wbits = _bits(getattr(m, "weight_quantizer", None))
        abits = _bits(getattr(m, "input_quantizer", None))
        weight = m.weight.numel()
        bias = m.bias.numel() if m.bias is not None else 0
        layer_params.update({id(m.weight)} | ({id(m.bias)} if m.bias is not None else set()))
        rows.append({"layer": name, "type": type(m).__name__, "params": weight + bias,
                     "weight_bits": wbits, "act_bits": abits, "macs": macs[name],
                     "bops": macs[name] * wbits * abits,
                     "size_bits": weight * wbits + bias * FLOAT_BITS})
    # Everything else a deployed model keeps (BN affine + running stats, quantizer steps, bases)
    # at 32 bits; layer weights are counted above.
    other = sum(t.numel() for t in list(model.parameters()) + list(model.buffers())
                if id(t) not in layer_params and t.is_floating_point())
    total = {"params": sum(r["params"] for r in rows),
             "other_float_values": other,
             "macs": sum(r["macs"] for r in rows),
             "bops": sum(r["bops"] for r in rows),
             "size_mb": (sum(r["size_bits"] for r in rows) + other * FLOAT_BITS) / 8e6,
             "fp32_size_mb": (sum(r["params"] for r in rows) + other) * 4 / 1e6,
             "fp32_bops": sum(r["macs"] for r in rows) * FLOAT_BITS * FLOAT_BITS,
             "image_size": image_size}
    total["compression"] = total["fp32_size_mb"] / total["size_mb"] if total["size_mb"] else 0.0
    return rows, total


def format_report(rows, total, per_layer=True):
    """Markdown: a per-layer table (if `per_layer`) and the totals."""
    from tabulate import tabulate

    parts = []
    if per_layer:
        table = [[r["layer"], r["type"], r["params"], r["weight_bits"], r["act_bits"],
                  f"{r['size_bits'] / 8e6:.4f}", f"{r['macs'] / 1e6:.2f}", f"{r['bops'] / 1e9:.2f}"]
                 for r in rows]
        parts.append(tabulate(table, headers=["layer", "type", "params", "W bits", "A bits",
                                              "size MB", "MMACs", "GBOPs"], tablefmt="pipe",
                              disable_numparse=True, colalign=("left", "left") + ("right",) * 6))
        parts.append("")
    parts.append(tabulate([
        ["parameters (Conv/Linear)", f"{total['params']:,}"],
        ["other float values (BN, quantizer steps)", f"{total['other_float_values']:,}"],
        ["size MB (trained bit widths)", f"{total['size_mb']:.3f}"],
        ["size MB (FP32)", f"{total['fp32_size_mb']:.3f}"],
        ["compression vs FP32", f"{total['compression']:.1f}x"],
        [f"GMACs per {total['image_size']}x{total['image_size']} image", f"{total['macs'] / 1e9:.3f}"],
        ["GBOPs (MACs x W bits x A bits)", f"{total['bops'] / 1e9:.2f}"],
        ["GBOPs if FP32", f"{total['fp32_bops'] / 1e9:.2f}"],
    ], headers=["total", "value"], tablefmt="pipe"))
    return "\n".join(parts)


_COSTS = {}


def config_cost(config_file, image_size=None):
    """(size MB, GBOPs) of the model a run's config.yaml builds (on CPU, random weights: only
    the architecture and bit widths matter; cached per MODEL section + image size). Raises on a
    config that builds no detector."""
    from ..engine.trainer import Trainer
    from .detector import load_cfg

    cfg = load_cfg(config_file, ["MODEL.WEIGHTS", "", "MODEL.WEIGHT_EXTRA", ""])
    size = image_size or cfg.INPUT.MIN_SIZE_TEST
    key = (cfg.MODEL.dump(), size)
    if key not in _COSTS:
        model = Trainer.build_model(cfg)
        _, total = model_report(model, size)
        _COSTS[key] = (total["size_mb"], total["bops"] / 1e9)
    return _COSTS[key]
