"""Compute a layer's quantized weight once per model forward and reuse it for the layer's later calls.

RetinaNet's and FCOS's heads are shared over the 5 FPN levels, so each head conv runs 5 times per
forward with the same weight. `enable_weight_reuse(model)` (called by `quantize_model`) makes each
forward of `model` a *scope*: inside it, the first call of a QuantConv2d/QuantLinear computes
`quantizer(weight)` and the following calls return that same tensor. The quantizer's forward and
backward then run once; autograd adds the 5 convs' gradients on the shared tensor and sends the
sum through the quantizer once. Outputs are bit-identical to recomputing; gradients of the weight
and of the quantizer's parameters are equal up to float rounding (the sum is taken before the
quantizer's backward instead of after it).

A weight computed in a scope is reused only while nothing it was computed from has changed: the
same weight and quantizer tensors (Parameters and buffers) at the same `_version` (bumped by
every in-place write, e.g. an optimizer step or `load_state_dict`), the same grad mode and the
same train/eval/calibration flags. A quantizer that changes its own state when called bumps a
version and is recomputed on its next call, so its per-call semantics are unchanged:
LQ-Net's weight basis, refit by every training call, is still refit once per call (5 times per
forward in a shared head conv, as without reuse); LSQ/LQ-Net's first-batch init and calibration
set `initialized` (a buffer), so the call after them recomputes. The scope ends with the forward,
also when it raises, and takes its cached tensors with it: a second forward (gradient
accumulation, eval after train, after `.to()`) always recomputes. Outside a scope (a layer called
on its own, export, `layer.quantized_weight()` in user code), or with
`model.reuse_quantized_weights = False`, nothing is cached.

    model = quantize_model(...)        # calls enable_weight_reuse(model)
    loss = sum(model(batch).values())  # each head conv quantizes its weight once
"""
import threading

import torch
from torch import nn

_local = threading.local()  # per thread: the stack of open scopes (nested forwards push one each)


def _scopes():
    if not hasattr(_local, "scopes"):
        _local.scopes = []
    return _local.scopes


def _open_scope(module, args):
    _scopes().append({} if module.reuse_quantized_weights else None)


def _close_scope(module, args, output):
    _scopes().pop()


def enable_weight_reuse(model: nn.Module):
    """Make every forward of `model` a weight-reuse scope; returns `model`.

    Registers two hooks on `model` (once; copies made by `copy.deepcopy` keep them) and sets the
    attribute `model.reuse_quantized_weights = True`; set it to False to recompute on every call.
    """
    if not hasattr(model, "reuse_quantized_weights"):
        model.register_forward_pre_hook(_open_scope)
        model.register_forward_hook(_close_scope, always_call=True)
    model.reuse_quantized_weights = True
    return model


def _state(layer):
    """What the quantized weight of `layer` depends on besides its values: (flags, tensors, versions).

    `_version` is torch's in-place write counter of a tensor; no public accessor exists.
    """
    quantizer = layer.weight_quantizer
    tensors = (layer.weight, *quantizer.parameters(), *quantizer.buffers())
    flags = (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), layer.training,
             quantizer.training, getattr(quantizer, "calibrating", False))
    return flags, tuple(map(id, tensors)), tuple(t._version for t in tensors), tensors


def reuse_in_scope(layer, compute):
    """`compute()` (the quantized weight of `layer`), reused within the innermost open scope.

    Returns the tensor computed by an earlier call of `layer` in the same scope when `_state(layer)`
    is what it was before that call; otherwise calls `compute()` and keeps its result for the scope.
    """
    scopes = _scopes()
    if not scopes or scopes[-1] is None:
        return compute()
    flags, ids, versions, tensors = _state(layer)
    hit = scopes[-1].get(layer)
    if hit is not None and hit[:3] == (flags, ids, versions):
        return hit[4]
    value = compute()
    scopes[-1][layer] = (flags, ids, versions, tensors, value)  # `tensors` pins the ids
    return value
