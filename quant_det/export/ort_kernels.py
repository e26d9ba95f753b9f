"""Which convolutions of a QDQ graph onnxruntime (CPU) runs as integer kernels, and an option for
the others.

onnxruntime fuses a QDQ Conv into an integer `QLinearConv` only in the pattern

    DQ(8-bit activation) + DQ(8-bit weight) [+ DQ(INT32 bias)] -> Conv [-> Relu] -> one QuantizeLinear

(the Relu only when the QuantizeLinear's zero point is the bottom of its type, so that onnxruntime
can drop it). Every other quantized conv runs in float: its output enters a residual or FPN `Add`,
a float layer, several quantizers with different scales, or is a graph output. Such a conv
dequantizes its weight at every run, and since that weight is no initializer it also loses the
prepacked NCHWc kernels the FP32 model's convs get.

`store_float_weights(model)` gives those convs their weight (and bias) as float initializers holding
exactly what their DequantizeLinear computes, float32(code) * scale: the same weights, those convs
run at FP32 speed, and the file grows by 3 bytes per such weight. The activation
QuantizeLinear/DequantizeLinear stay: they are the model's quantizers. Outputs agree up to the
summation order of onnxruntime's float kernels (the prepacked kernel sums in another order than
the DQ-fed one: an ulp, which can flip a later rounding like BN folding can).
"""
import numpy as np
from onnx import TensorProto, numpy_helper

EIGHT_BIT = (TensorProto.INT8, TensorProto.UINT8)
_BOTTOM = {TensorProto.INT8: -128, TensorProto.UINT8: 0}


class _Index:
    def __init__(self, graph):
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}

    def dq(self, name):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def zero_point(self, q_node):
        """(ONNX type, value) of a QuantizeLinear's zero point, or (None, None)."""
        if len(q_node.input) < 3 or q_node.input[2] not in self.inits:
            return None, None
        t = self.inits[q_node.input[2]]
        return t.data_type, int(numpy_helper.to_array(t).reshape(-1)[0])


def integer_kernel(node, index):
    """True if onnxruntime can fuse Conv `node` into a QLinearConv (see the module docstring)."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return False
    x_dq, w_dq = index.dq(node.input[0]), index.dq(node.input[1])
    if x_dq is None or w_dq is None or w_dq.input[0] not in index.inits:
        return False
    if index.inits[w_dq.input[0]].data_type not in EIGHT_BIT:
        return False
    x_q = index.producer.get(x_dq.input[0])
    if x_q is None or x_q.op_type != "QuantizeLinear" or index.zero_point(x_q)[0] not in EIGHT_BIT:
        return False
    out = node.output[0]
    users = index.consumers.get(out, [])
    if out in index.outputs or len(users) != 1:
        return False
    relu = users[0] if users[0].op_type == "Relu" else None
    if relu is not None:
        if relu.output[0] in index.outputs or len(index.consumers.get(relu.output[0], [])) != 1:
            return False
        users = index.consumers[relu.output[0]]
    if users[0].op_type != "QuantizeLinear":
        return False
    dtype, zp = index.zero_point(users[0])
    return dtype in EIGHT_BIT and (relu is None or zp == _BOTTOM[dtype])


def _dequantized(dq, index):
    """float32(code - zero point) * scale of a DequantizeLinear on initializers, as onnxruntime computes it."""
    codes = numpy_helper.to_array(index.inits[dq.input[0]]).astype(np.int64)
    scale = numpy_helper.to_array(index.inits[dq.input[1]]).astype(np.float32)
    zp = (numpy_helper.to_array(index.inits[dq.input[2]]).astype(np.int64)
          if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale, dtype=np.int64))
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and codes.ndim > 1:
        shape = [1] * codes.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (codes - zp).astype(np.float32) * scale


def store_float_weights(model):
    """Rewrite, in place, the 8-bit weight (and bias) DequantizeLinear of every Conv onnxruntime
    cannot run as an integer kernel into float initializers. Returns the names of those Convs."""
    graph = model.graph
    index = _Index(graph)
    changed, new_inits = [], []
    for node in graph.node:
        if node.op_type != "Conv" or integer_kernel(node, index):
            continue
        w_dq = index.dq(node.input[1])
        if w_dq is None or w_dq.input[0] not in index.inits or \
                index.inits[w_dq.input[0]].data_type not in EIGHT_BIT:
            continue
        for slot in (1, 2):
            dq = index.dq(node.input[slot]) if len(node.input) > slot else None
            if dq is None or any(i and i not in index.inits for i in dq.input):
                continue
            name = f"{node.name}.{'weight' if slot == 1 else 'bias'}_float"
            new_inits.append(numpy_helper.from_array(_dequantized(dq, index), name))
            node.input[slot] = name
        changed.append(node.name)
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input}
    dead = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in used
            and n.output[0] not in index.outputs]
    for n in dead:
        graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used or t.name in index.outputs]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return changed
