"""The detector side of the export: load a config + checkpoint, wrap backbone + FPN + head as one
traceable network, export it, and run the exported network inside detectron2's own evaluation.

    cfg, model = load_detector("configs/digits/quant/fcos_R_18_FPN_FullBN_w4a4_lsq.yaml", "model.pth")
    result = export_detector(model, "fcos_w4a4.onnx")          # ExportResult: proto, log, names
    ort_model = OnnxDetector(model, "fcos_w4a4.onnx")          # same interface as `model`
    ap = evaluate(cfg, ort_model)["bbox"]["AP"]

The ONNX network takes `images`: the normalized, padded batch that detectron2's
`preprocess_image` builds (N x 3 x H x W, H and W multiples of the backbone's size divisibility),
and returns the head's raw per-level outputs (`logits_p3`, ..., `deltas_p3`, ..., and for FCOS
`centerness_p3`, ...). Box decoding and NMS stay outside, as in detectron2's own export:
`OnnxDetector` runs them with the detector's own `forward_inference`.
"""
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling.postprocessing import detector_postprocess
from torch import nn

from .. import modeling  # noqa: F401  (registers FCOS and the FPN-BN backbone)
from ..config import add_quant_det_config
from .prepare import prepare_export

logger = logging.getLogger(__name__)
HEAD_OUTPUTS = {"RetinaNet": ("logits", "deltas"), "FCOS": ("logits", "deltas", "centerness")}


def load_cfg(config_file, opts=(), weights=None):
    """A frozen CPU cfg with quant_det's keys from `config_file` + KEY VALUE `opts`."""
    cfg = get_cfg()
    add_quant_det_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if weights:
        cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def load_detector(config_file, weights=None, opts=()):
    """(cfg, eval-mode model with MODEL.WEIGHTS loaded) for a quant_det config."""
    from ..engine.trainer import Trainer

    cfg = load_cfg(config_file, opts, weights)
    model = Trainer.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return cfg, model.eval()


class DenseNetwork(nn.Module):
    """backbone + FPN (+ head) of a detectron2 dense detector, as a function of the image batch."""

    def __init__(self, model, part="detector"):
        super().__init__()
        if part not in ("detector", "backbone"):
            raise ValueError(f"part={part!r}: allowed 'detector', 'backbone'")
        self.backbone = model.backbone
        self.part = part
        if part == "detector":
            self.head = model.head
            self.in_features = list(model.head_in_features)
            arch = type(model).__name__
            if arch not in HEAD_OUTPUTS:
                raise ValueError(f"meta-architecture {arch!r}: export supports {list(HEAD_OUTPUTS)}")
            self.kinds = HEAD_OUTPUTS[arch]
        else:
            self.in_features = list(model.backbone.output_shape())

    def output_names(self):
        if self.part == "backbone":
            return list(self.in_features)
        return [f"{k}_{f}" for k in self.kinds for f in self.in_features]

    def forward(self, images):
        features = self.backbone(images)
        if self.part == "backbone":
            return tuple(features[f] for f in self.in_features)
        for m in self.head.modules():  # a traced/aborted call must not leave a BN cycle mid-way
            if hasattr(m, "_pos"):
                m._pos = 0
        outputs = self.head([features[f] for f in self.in_features])
        return tuple(t for group in outputs for t in group)


@dataclass
class ExportResult:
    proto: object
    log: List[List[str]]
    layer_outputs: Dict[str, List[str]]
    input_names: List[str]
    output_names: List[str]
    export_model: nn.Module = field(repr=False)


def example_images(cfg, batch=1):
    """A deterministic normalized-image batch of the test size (MIN_SIZE_TEST rounded up to the
    size divisibility), for tracing and per-layer checks."""
    size = cfg.INPUT.MIN_SIZE_TEST
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, size, size, generator=g)


def export_detector(model, path, part="detector", int4=True, fold_bn=True, int_bias=True,
                    example=None, opset=None, positive_scales=False, float_weights_for_float_convs=False):
    """Export `model` (eval mode, quantized or float) to ONNX at `path` (None: don't save).

    Returns an ExportResult. The batch size and image size are dynamic.
    `float_weights_for_float_convs`: 8-bit convs that onnxruntime cannot run as integer kernels
    get float weights (same values; see `ort_kernels.store_float_weights`), listed in the
    model's `quant_det.float_weight_convs` metadata.
    """
    import onnx

    from .onnx_graph import export_module
    from .ort_kernels import store_float_weights

    export_model, log = prepare_export(model, fold_bn=fold_bn, int_bias=int_bias, int4=int4,
                                       positive_scales=positive_scales)
    network = DenseNetwork(export_model, part).eval()
    if example is None:
        example = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    names = network.output_names()
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}}
    dynamic.update({n: {0: "batch", 2: f"h_{n}", 3: f"w_{n}"} for n in names})
    proto, layer_outputs = export_module(network, (example,), None, ["images"], names, int4=int4,
                                         log_rows=log, dynamic_axes=dynamic, opset=opset)
    if float_weights_for_float_convs:
        entry = proto.metadata_props.add()
        entry.key = "quant_det.float_weight_convs"
        entry.value = json.dumps(store_float_weights(proto))
    if path:
        onnx.save(proto, path)
    log = [row for row in log if row[0] in layer_outputs]  # --part backbone: no head rows
    return ExportResult(proto, log, layer_outputs, ["images"], names, network)


def session(path_or_proto, threads=None, optimization="all", profile=False):
    """An onnxruntime CPU InferenceSession (`optimization`: "all", "basic", "extended", "disable")."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[optimization]
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.enable_profiling = profile
    so.log_severity_level = 3
    model = path_or_proto if isinstance(path_or_proto, (str, os.PathLike)) else path_or_proto.SerializeToString()
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


class OnnxDetector(nn.Module):
    """A detectron2 dense detector whose backbone + FPN + head run in onnxruntime.

    `model` supplies preprocessing, box decoding, NMS and postprocessing (detectron2's own code);
    its weights are not used for the network. Call it like the model, on a list of dicts.
    """

    def __init__(self, model, onnx_path, threads=None):
        super().__init__()
        self.model = model.eval()
        self.session = session(onnx_path, threads=threads)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.kinds = HEAD_OUTPUTS[type(model).__name__]
        self.levels = len(model.head_in_features)

    def forward(self, batched_inputs):
        model = self.model
        images = model.preprocess_image(batched_inputs)
        outs = self.session.run(None, {"images": images.tensor.numpy()})
        tensors = [torch.from_numpy(np.asarray(o)) for o in outs]
        predictions = [tensors[i * self.levels:(i + 1) * self.levels] for i in range(len(self.kinds))]
        features = [torch.empty((t.shape[0], 0) + tuple(t.shape[2:])) for t in predictions[0]]
        results = model.forward_inference(images, features, predictions)
        processed = []
        for result, inputs, image_size in zip(results, batched_inputs, images.image_sizes):
            height = inputs.get("height", image_size[0])
            width = inputs.get("width", image_size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed


def evaluate(cfg, model, dataset=None, max_images=None):
    """COCO bbox evaluation (pycocotools) of `model` (or an OnnxDetector) on DATASETS.TEST[0]."""
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset

    from ..data import register_datasets_for

    register_datasets_for(cfg)
    dataset = dataset or cfg.DATASETS.TEST[0]
    loader = build_detection_test_loader(cfg, dataset)
    if max_images:
        import itertools

        loader = list(itertools.islice(loader, max_images))
    evaluator = COCOEvaluator(dataset, tasks=("bbox",), output_dir=None, use_fast_impl=False)
    with torch.no_grad():
        return inference_on_dataset(model, loader, evaluator)


def layer_differences(result: ExportResult, images: torch.Tensor, optimization="all"):
    """Per-layer max |PyTorch - onnxruntime| of every exported layer's output on `images`.

    onnxruntime runs the exported graph with every layer input and output exposed (exposing them
    can keep onnxruntime from fusing a layer into an integer kernel; the plain graph is checked
    by AP). Two differences per layer, over all its calls (the head's convs: one per level):
      * "layer": the PyTorch export-form layer (same integer codes and scales, BN folded) run on
        onnxruntime's own input of that layer, vs onnxruntime's output: what the runtime's
        kernels change in one layer;
      * "accumulated": the whole export-form PyTorch model vs onnxruntime, layer by layer. A
        last-bit difference of a convolution (another summation order) can flip a rounding of
        the next quantizer; flipped values propagate, so this grows with depth.
    Returns rows [layer, calls, layer max diff, accumulated max diff, max |output|].
    """
    import onnx
    from onnx import TensorProto, helper

    from .modules import ExportLayer
    from .onnx_graph import metadata

    modules, captured = {}, {}
    for m in result.export_model.modules():
        if isinstance(m, ExportLayer):
            modules.setdefault(m.name, []).append(m)
    hooks = [m.register_forward_hook(
        lambda mod, inp, out: captured.setdefault(mod.name, []).append(out.detach().clone()))
        for ms in modules.values() for m in ms]
    try:
        with torch.no_grad():
            result.export_model(images)
    finally:
        for h in hooks:
            h.remove()
    inputs = metadata(result.proto).get("quant_det.layer_inputs", {})
    proto = onnx.ModelProto()
    proto.CopyFrom(result.proto)
    existing = {o.name for o in proto.graph.output} | {i.name for i in proto.graph.input}
    names = {n for group in (result.layer_outputs, inputs) for outs in group.values() for n in outs}
    proto.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in sorted(names - existing))
    sess = session(proto, optimization=optimization)
    wanted = [o.name for o in sess.get_outputs()]
    values = dict(zip(wanted, sess.run(None, {"images": images.numpy()})))
    values["images"] = images.numpy()
    rows = []
    for layer, outs in result.layer_outputs.items():
        torch_outs, layer_modules = captured.get(layer, []), modules.get(layer, [])
        accumulated = [float(np.abs(values[n] - t.numpy()).max()) for n, t in zip(outs, torch_outs)]
        own = []
        with torch.no_grad():
            for i, (n_in, n_out) in enumerate(zip(inputs.get(layer, []), outs)):
                module = layer_modules[i % len(layer_modules)]
                y = module(torch.from_numpy(np.array(values[n_in])))
                own.append(float(np.abs(values[n_out] - y.numpy()).max()))
        scale = max(float(t.abs().max()) for t in torch_outs) if torch_outs else 0.0
        rows.append([layer, len(outs), max(own) if own else float("nan"),
                     max(accumulated) if accumulated else float("nan"), scale])
    return rows
