"""Trace an export-form module to ONNX and turn the `quant_det::*` placeholders into real ops.

    model_proto, info = export_module(module, (x,), "out.onnx", input_names=["images"],
                                      output_names=[...], int4=True)

`int4=True`: activations and weights of 4 bits and below become INT4/UINT4
QuantizeLinear/DequantizeLinear at opset 21. `int4=False`: every grid is stored in INT8/UINT8,
narrower grids get a Clip between QuantizeLinear and DequantizeLinear (brevitas' "QCDQ"), opset 17.
With INT4, a grid narrower than its container (2-3 bits, custom LEVELS) is clipped in float right
after DequantizeLinear, at the grid's end values (exact; runtimes have no Clip for INT4, and
onnxruntime 1.32's Clip-before-Q fusion fails on an INT4 zero point).

The saved model carries metadata: `quant_det.export_log` (JSON rows, one per layer, what each
became) and `quant_det.layer_outputs` / `quant_det.layer_inputs` (layer -> names of the tensors
holding its outputs / inputs, one per call, for per-layer comparisons). Nodes made from a layer carry `quant_det.layer` in their
metadata; a Conv/Gemm whose weight is a level set (LQ-Net) carries `quant_det.weight_levels`.
"""
import io
import json
import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from .specs import ONNX_TYPES, RANGES, container

DOMAIN = "quant_det"
TORCHSCRIPT_MAX_OPSET = 20


def _numpy_dtype(dtype_name):
    if dtype_name in ("int4", "uint4"):
        import ml_dtypes  # installed with onnx; numpy_helper packs its 4-bit arrays two per byte

        return getattr(ml_dtypes, dtype_name)
    return {"float": np.float32, "int8": np.int8, "uint8": np.uint8, "int32": np.int32}[dtype_name]


def _tensor(name, dtype_name, values, dims):
    """An initializer of ONNX type `dtype_name` ("int4", "float", ...) holding `values`, stored as
    raw bytes (4-bit values packed two per byte)."""
    array = np.asarray(values)
    if dtype_name != "float":
        lo, hi = RANGES[dtype_name]
        if array.size and (array.min() < lo or array.max() > hi):
            raise ValueError(f"{name}: values outside {dtype_name} [{lo}, {hi}]")
    tensor = numpy_helper.from_array(array.astype(_numpy_dtype(dtype_name)).reshape(dims), name)
    assert tensor.data_type == (ONNX_TYPES.get(dtype_name) or TensorProto.FLOAT)
    return tensor


class _Graph:
    """Initializer/consumer bookkeeping for rewriting one GraphProto."""

    def __init__(self, graph):
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
        self.aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
        self.new_inits = []
        self.used_names = set(self.inits) | {o for n in graph.node for o in n.output}

    def array(self, name):
        while name in self.aliases:  # the exporter replaces duplicate initializers by Identity
            name = self.aliases[name]
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.consts[name]
        return numpy_helper.to_array(next(a.t for a in node.attribute if a.name == "value"))

    def unique(self, base):
        name, i = base, 1
        while name in self.used_names:
            name, i = f"{base}_{i}", i + 1
        self.used_names.add(name)
        return name

    def add_init(self, base, dtype_name, values, dims):
        name = self.unique(base)
        self.new_inits.append(_tensor(name, dtype_name, values, dims))
        return name


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _meta(node, **items):
    for key, value in items.items():
        entry = node.metadata_props.add()
        entry.key, entry.value = f"quant_det.{key}", str(value)


def finalize(model, int4=True, log_rows=None, opset=None):
    """Rewrite the placeholders of a traced model in place; return (model, layer_outputs)."""
    graph = model.graph
    g = _Graph(graph)
    out_nodes, layer_outputs, layer_inputs, level_weights = [], {}, {}, {}
    renames = {}  # placeholder output -> tensor that replaces it
    converted = {}  # (codes initializer, container) -> new initializer name
    uses_int4 = False
    graph_outputs = {o.name for o in graph.output}
    for node in graph.node:
        if node.domain != DOMAIN:
            out_nodes.append(node)
            continue
        a = _attrs(node)
        layer = a.get("layer", b"").decode() if isinstance(a.get("layer"), bytes) else a.get("layer", "")
        src, dst = node.input[0], node.output[0]
        new = []
        if node.op_type == "QAct":
            lo, hi = a["lo"], a["hi"]
            box = container(lo, hi, int4)
            uses_int4 |= box in ("int4", "uint4")
            scale = node.input[1]
            zp = g.add_init(f"{layer}.act_zero_point", box, [0], [])
            clip = (lo, hi) != RANGES[box]
            q = g.unique(f"{layer}.act_q")
            new.append(helper.make_node("QuantizeLinear", [src, scale, zp], [q], name=g.unique(f"{layer}.act_quantize")))
            if clip and box not in ("int4", "uint4"):
                lo_i = g.add_init(f"{layer}.act_clip_min", box, [lo], [])
                hi_i = g.add_init(f"{layer}.act_clip_max", box, [hi], [])
                qc = g.unique(f"{layer}.act_q_clipped")
                new.append(helper.make_node("Clip", [q, lo_i, hi_i], [qc], name=g.unique(f"{layer}.act_clip")))
                q = qc
            dq = g.unique(f"{layer}.act_dq") if clip and box in ("int4", "uint4") else dst
            new.append(helper.make_node("DequantizeLinear", [q, scale, zp], [dq],
                                        name=g.unique(f"{layer}.act_dequantize")))
            if dq != dst:  # no runtime clips INT4: clip the dequantized grid values (exact)
                s = np.float32(g.array(scale))
                lo_f = g.add_init(f"{layer}.act_clip_min", "float", [np.float32(lo) * s], [])
                hi_f = g.add_init(f"{layer}.act_clip_max", "float", [np.float32(hi) * s], [])
                new.append(helper.make_node("Clip", [dq, lo_f, hi_f], [dst], name=g.unique(f"{layer}.act_clip")))
        elif node.op_type == "QWeight":
            role = a["role"].decode() if isinstance(a["role"], bytes) else a["role"]
            lo, hi = a["lo"], a["hi"]
            box = "int32" if role == "bias" else container(lo, hi, int4)
            uses_int4 |= box in ("int4", "uint4")
            key = (src, box)
            if key not in converted:
                codes = g.array(src)
                converted[key] = g.add_init(f"{layer}.{role}_int", box, codes, codes.shape)
            scale = node.input[1]
            per_channel = g.array(scale).ndim == 1
            kwargs = {"axis": 0} if per_channel else {}
            new.append(helper.make_node("DequantizeLinear", [converted[key], scale], [dst],
                                        name=g.unique(f"{layer}.{role}_dequantize"), **kwargs))
        elif node.op_type == "LevelAct":
            thresholds, values = a["thresholds"], a["values"]
            y = g.add_init(f"{layer}.act_level0", "float", [values[0]], [])
            for i, (t, v) in enumerate(zip(thresholds, values[1:])):
                t_name = g.add_init(f"{layer}.act_threshold{i}", "float", [t], [])
                v_name = g.add_init(f"{layer}.act_level{i + 1}", "float", [v], [])
                cond = g.unique(f"{layer}.act_gt{i}")
                new.append(helper.make_node("Greater", [src, t_name], [cond], name=g.unique(f"{layer}.act_gt")))
                out = dst if i == len(thresholds) - 1 else g.unique(f"{layer}.act_y{i}")
                new.append(helper.make_node("Where", [cond, v_name, y], [out], name=g.unique(f"{layer}.act_where")))
                y = out
        elif node.op_type in ("LevelWeight", "Mark"):
            if node.op_type == "LevelWeight":
                levels = a["levels"].decode() if isinstance(a["levels"], bytes) else a["levels"]
                level_weights[dst] = (layer, levels)
            else:
                role = a["role"].decode() if isinstance(a["role"], bytes) else a["role"]
                target = layer_outputs if role == "output" else layer_inputs
                target.setdefault(layer, []).append(dst if dst in graph_outputs else src)
            if dst in graph_outputs:
                new.append(helper.make_node("Identity", [src], [dst], name=g.unique(f"{layer}.output")))
            else:
                renames[dst] = src
        else:
            raise ValueError(f"unknown placeholder {node.op_type}")
        for n in new:
            _meta(n, layer=layer)
        out_nodes.extend(new)

    def resolve(name):
        while name in renames:
            name = renames[name]
        return name

    for node in out_nodes:
        for i, name in enumerate(node.input):
            if name in level_weights:
                layer, levels = level_weights[name]
                _meta(node, layer=layer, weight_levels=levels)
            node.input[i] = resolve(name)
    layer_outputs = {k: [resolve(v) for v in vs] for k, vs in layer_outputs.items()}
    layer_inputs = {k: [resolve(v) for v in vs] for k, vs in layer_inputs.items()}
    # Name each Conv/Gemm after its layer (the node that consumes the layer's weight).
    weight_of = {n.output[0]: next(p.value for p in n.metadata_props if p.key == "quant_det.layer")
                 for n in out_nodes if n.op_type == "DequantizeLinear"
                 and n.name.split(".")[-1].startswith("weight_dequantize")}
    for node in out_nodes:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            layer = weight_of.get(node.input[1]) or next(
                (level_weights[k][0] for k in level_weights if resolve(k) == node.input[1]), None)
            if layer:
                node.name = g.unique(layer)
                if not any(p.key == "quant_det.layer" for p in node.metadata_props):
                    _meta(node, layer=layer)
    del graph.node[:]
    graph.node.extend(out_nodes)
    del graph.value_info[:]  # the tracer's shapes of the placeholders; re-inferred below
    graph.initializer.extend(g.new_inits)
    # Drop initializers only the placeholders used (the int32 codes).
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for imp in list(model.opset_import):
        if imp.domain == DOMAIN:
            model.opset_import.remove(imp)
    target = opset or (21 if uses_int4 else None)
    if target:
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                imp.version = max(imp.version, target)
    model.ir_version = max(model.ir_version, 10)
    meta = {"quant_det.layer_outputs": json.dumps(layer_outputs),
            "quant_det.layer_inputs": json.dumps(layer_inputs)}
    if log_rows is not None:
        meta["quant_det.export_log"] = json.dumps(log_rows)
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    del graph.value_info[:]
    graph.value_info.extend(inferred.graph.value_info)
    return model, layer_outputs


def export_module(module, args, path, input_names, output_names, int4=True, log_rows=None,
                  dynamic_axes=None, opset=None):
    """torch.onnx.export (TorchScript exporter) + `finalize`; saves to `path` if given.

    Returns (ModelProto, layer_outputs).
    """
    export_opset = min(opset or (TORCHSCRIPT_MAX_OPSET if int4 else 17), TORCHSCRIPT_MAX_OPSET)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=export_opset,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, do_constant_folding=True,
                          custom_opsets={DOMAIN: 1})
    model = onnx.load_from_string(buffer.getvalue())
    model, layer_outputs = finalize(model, int4=int4, log_rows=log_rows, opset=opset)
    if path:
        onnx.save(model, path)
    return model, layer_outputs


def metadata(model):
    """The model's metadata_props as a dict (JSON values decoded where they are JSON)."""
    out = {}
    for p in model.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except ValueError:
            out[p.key] = p.value
    return out


def count_ops(model):
    """{op_type: count} of the main graph."""
    counts = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
