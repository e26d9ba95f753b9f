"""`tools/sensitivity.py`'s work on a detectron2 dense detector: load, measure, write the report.

`analyze(cfg, weights, out_dir, num_images=32, with_ap=False)` builds the quantized model of
`cfg`, loads `weights` (calibrating quantizers on CALIB batches if the file is a float checkpoint),
measures `layer_sensitivity` / `group_sensitivity` on the first `num_images` images of
DATASETS.TEST[0] and, with `with_ap`, the bbox AP of the whole split with every layer quantized,
every layer float, and each group alone quantized / alone float. It writes `sensitivity.json`,
`sensitivity.md` (tables) and `sensitivity.png` (bar charts) into `out_dir`.
"""
import itertools
import json
import logging
import os

import torch
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import COCOEvaluator, inference_on_dataset

from ..engine.calibrate import calibrate
from ..engine.trainer import Trainer, build_checkpointer
from ..experiments.records import markdown_table
from ..quantizers import LearnedRangeQuantizer
from .sensitivity import float_layers, group_sensitivity, layer_sensitivity, quantized_layers

logger = logging.getLogger(__name__)
BATCH = 8
CALIB = 20


def head_outputs(model, batch):
    """A dense detector's raw head outputs for `batch`, one tensor per kind (levels concatenated):
    class logits, box deltas and, for FCOS, centerness logits."""
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    out = model.head([features[f] for f in model.head_in_features])
    return [torch.cat([level.flatten() for level in kind]) for kind in out]


def load_quantized(cfg, weights):
    """The quantized model of `cfg` with `weights` loaded; quantizers that the file did not
    initialize (a float checkpoint) are calibrated on CALIB training batches, BatchNorm statistics
    kept as loaded (re-estimating them for the quantized network would also change the float
    reference every error is measured against)."""
    model = Trainer.build_model(cfg)
    build_checkpointer(cfg, model).resume_or_load(weights, resume=False)
    if not quantized_layers(model):
        raise ValueError(f"MODEL.QUANTIZATION.SCOPE={list(cfg.MODEL.QUANTIZATION.SCOPE)}: the model has "
                         "no quantized layer to analyze; pass a quantized config")
    fresh = [m for m in model.modules() if isinstance(m, LearnedRangeQuantizer) and not m.is_initialized()]
    if fresh:
        logger.info(f"{len(fresh)} quantizers not in {weights!r}: calibrating on {CALIB} batches")
        calibrate(model, Trainer.build_train_loader(cfg), CALIB, bn=False)
    return model.eval()


def evaluate_ap(cfg, model):
    """bbox AP of `model` on DATASETS.TEST[0] (pycocotools, nothing written)."""
    name = cfg.DATASETS.TEST[0]
    evaluator = COCOEvaluator(name, tasks=("bbox",), output_dir=None, use_fast_impl=False)
    return inference_on_dataset(model, build_detection_test_loader(cfg, name), evaluator)["bbox"]["AP"]


def analyze(cfg, weights, out_dir, num_images=32, with_ap=False):
    """Measure, write sensitivity.{json,md,png} into `out_dir`; return the report dict."""
    if not cfg.DATASETS.TEST:
        raise ValueError("DATASETS.TEST is empty: the sensitivity tool measures on its first data set")
    model = load_quantized(cfg, weights)
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    images = [d for batch in itertools.islice(loader, num_images) for d in batch]
    batches = [images[i:i + BATCH] for i in range(0, len(images), BATCH)]
    report = {"weights": weights, "num_images": len(images),
              "layers": layer_sensitivity(model, batches, head_outputs),
              "groups": group_sensitivity(model, batches, head_outputs)}
    if with_ap:
        names = list(quantized_layers(model))
        report["ap"] = {"all quantized": evaluate_ap(cfg, model)}
        with float_layers(model, names):
            report["ap"]["all float"] = evaluate_ap(cfg, model)
        for row in report["groups"][1:]:
            members = [n for n in names if _group(report, n) == row["group"]]
            with float_layers(model, [n for n in names if n not in members]):
                row["ap_only_quantized"] = evaluate_ap(cfg, model)
            with float_layers(model, members):
                row["ap_only_float"] = evaluate_ap(cfg, model)
    write_report(report, out_dir)
    return report


def _group(report, layer):
    return next(r["group"] for r in report["layers"] if r["layer"] == layer)


def markdown(report):
    """The report as two markdown tables (groups, then layers by decreasing error)."""
    ap = report.get("ap")
    lines = ["# Quantization sensitivity", "",
             f"Weights `{report['weights']}`, {report['num_images']} validation images. Error = "
             "relative squared error of the head outputs against the same model with every layer "
             "float (0 = no change, 1 = signal lost), averaged over output kinds.", ""]
    if any(r["weight"].startswith("dorefa/") and r["weight"] != "dorefa/1b" for r in report["layers"]):
        lines += ["DoReFa weights do not keep the float weights' scale (they take the values ±1/3, "
                  "±1 at 2 bits). On an FP32 checkpoint a DoReFa layer scales its output by about "
                  "1/mean|w| under BatchNorm statistics made for the float weights (errors far above 1, "
                  "up to inf, until QAT re-learns them); a layer of a DoReFa-*trained* checkpoint run "
                  "float uses raw weights against statistics learned for the quantized ones, so that "
                  "\"float\" reference is not its FP32 parent. Either way the errors below rank "
                  "layers at best; measure DoReFa's cost in AP (QAT rows).", ""]
    if ap:
        lines += [f"bbox AP: all quantized {ap['all quantized']:.1f}, all float {ap['all float']:.1f}.", ""]
    columns = ["group", "layers", "error, only this group quantized", "error, only this group float"]
    columns += ["AP, only quantized", "AP, only float"] if ap else []
    rows = []
    for r in report["groups"]:
        cells = [r["group"], r["layers"], f"{r['error_only_quantized']:.4f}", f"{r['error_only_float']:.4f}"]
        if ap:
            cells += [f"{r.get('ap_only_quantized', ap['all quantized']):.1f}",
                      f"{r.get('ap_only_float', ap['all float'] if r['group'] != 'all' else ap['all quantized']):.1f}"]
        rows.append(cells)
    lines += [markdown_table(columns, rows), ""]
    by_error = sorted(report["layers"], key=lambda r: -r["error"])
    lines.append(markdown_table(
        ["layer", "group", "weight", "activation", "error, only this layer quantized"],
        [[r["layer"], r["group"], r["weight"], r["act"], f"{r['error']:.4f}"] for r in by_error]))
    return "\n".join(lines) + "\n"


def plot(report, path):
    """Bar charts: per layer (model order, coloured by group) and per group."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, groups = report["layers"], report["groups"][1:]
    names = list(dict.fromkeys(r["group"] for r in layers))
    colors = {g: plt.cm.tab10(i % 10) for i, g in enumerate(names)}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, max(5, 0.18 * len(layers))), dpi=80,
                                   gridspec_kw={"width_ratios": [3, 2]})
    ax1.barh(range(len(layers)), [r["error"] for r in layers], color=[colors[r["group"]] for r in layers])
    ax1.set_yticks(range(len(layers)), [r["layer"] for r in layers], fontsize=6)
    ax1.invert_yaxis()
    ax1.set(xlabel="output error, only this layer quantized", title="per layer")
    y = range(len(groups))
    ax2.barh([i - 0.2 for i in y], [r["error_only_quantized"] for r in groups], height=0.4,
             color=[colors[r["group"]] for r in groups], label="only this group quantized")
    ax2.barh([i + 0.2 for i in y], [r["error_only_float"] for r in groups], height=0.4,
             color="lightgray", label="only this group float")
    ax2.axvline(report["groups"][0]["error_only_quantized"], color="k", ls=":", label="all quantized")
    ax2.set_yticks(list(y), [r["group"] for r in groups])
    ax2.invert_yaxis()
    ax2.set(xlabel="output error", title="per group")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report, out_dir):
    """sensitivity.json, sensitivity.md and sensitivity.png in `out_dir` (created if missing)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "sensitivity.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, "sensitivity.md"), "w") as f:
        f.write(markdown(report))
    plot(report, os.path.join(out_dir, "sensitivity.png"))
