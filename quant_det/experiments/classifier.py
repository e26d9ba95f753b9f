"""Digit-crop classifier: steps (1) and (2) of the low-bit detection recipe, on digits-det.

The original model-quantization recipe trains an FP32 ResNet-18 classifier ("backbone_full"),
fine-tunes a low-bit copy of it ("backbone_low"), renames both to detectron2 names and uses them
to initialize detectors. Here the classification task is the digits-det boxes themselves: every
box becomes a square crop (padded by CROP_PAD of its longer side), resized to `size` x `size`,
in the detector's input format (BGR, normalized by PIXEL_MEAN/PIXEL_STD), so that the backbone
sees the same channel order and scale in both tasks.

`train_classifier` writes `out_dir/model_final.pth` (a bare torchvision ResNet-18 state dict,
quantizer state included) and `out_dir/metrics.json`. Example (see tools/train_classifier.py):

    full = train_classifier("output/digits/backbone_full", epochs=8, lr=0.002, batch_size=64, seed=0)
    spec = QuantizationSpec(scope=SCOPE, weight_method="lsq", weight_bits=2,
                            act_method="lsq", act_bits=2)
    low = train_classifier("output/digits/backbone_low_w2a2_lsq", epochs=4, lr=0.0005,
                           batch_size=64, seed=0, quant_spec=spec,
                           init="output/digits/backbone_full/model_final.pth")
"""
import json
import logging
import math
import os
import time
from datetime import timedelta

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.nn import functional as F

from ..checkpoint import atomic_torch_save, read_checkpoint
from ..checkpoint.checkpointer import atomic_write
from ..convert import QuantizationSpec, quantize_model
from ..data import digits_det_root
from ..data.digits_det import ANNOTATIONS_FILE, IMAGES_DIR, NUM_CLASSES

# detectron2's MODEL.PIXEL_MEAN / PIXEL_STD for BGR input (configs/digits/Base-digits.yaml).
PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
PIXEL_STD_BGR = (57.375, 57.120, 58.395)
CROP_PAD = 0.15  # fraction of the box's longer side added on each side
# Quantized: the residual stages. conv1 (the detector's stem) and fc stay float, as the original
# recipe keeps the first and last layers full precision.
SCOPE = ("layer1", "layer2", "layer3", "layer4")
MAX_SHIFT = 2  # augmentation: random translation of each batch by up to this many pixels
# Defaults of tools/train_classifier.py (see its --help): measured on the default digits-det.
DEFAULTS = {"fp32": {"epochs": 8, "lr": 0.002}, "quant": {"epochs": 4, "lr": 0.0005}, "size": 48}
PROGRESS_EVERY = 20  # batches between progress lines (with an ETA) in the log
MODEL_FILE = "model_final.pth"
METRICS_FILE = "metrics.json"

logger = logging.getLogger(__name__)


def _square_box(box, image_size, pad):
    """The square (x0, y0, x1, y1) centred on XYWH `box`, padded, shifted to lie inside the image."""
    x, y, w, h = box
    side = min(int(round(max(w, h) * (1 + 2 * pad))), min(image_size))
    x0 = int(round(x + w / 2 - side / 2))
    y0 = int(round(y + h / 2 - side / 2))
    x0 = min(max(x0, 0), image_size[0] - side)
    y0 = min(max(y0, 0), image_size[1] - side)
    return x0, y0, x0 + side, y0 + side


def load_digit_crops(root=None, split="train", size=DEFAULTS["size"], pad=CROP_PAD):
    """Return (images [N,3,size,size] float32 normalized BGR, labels [N] int64 in 0..9).

    `root` is the digits-det directory (holding train/ and val/); None means `digits_det_root()`.
    Labels are COCO category_id - 1, i.e. the digit itself.
    """
    split_dir = os.path.join(digits_det_root(root), split)
    with open(os.path.join(split_dir, ANNOTATIONS_FILE)) as f:
        coco = json.load(f)
    files = {img["id"]: img["file_name"] for img in coco["images"]}
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    crops, labels = [], []
    for image_id in sorted(by_image):
        with Image.open(os.path.join(split_dir, IMAGES_DIR, files[image_id])) as im:
            image = im.convert("RGB")
        for ann in sorted(by_image[image_id], key=lambda a: a["id"]):
            crop = image.crop(_square_box(ann["bbox"], image.size, pad))
            crops.append(np.asarray(crop.resize((size, size), Image.BILINEAR)))
            labels.append(ann["category_id"] - 1)
    bgr = torch.from_numpy(np.stack(crops)[..., ::-1].copy()).permute(0, 3, 1, 2).float()
    mean = torch.tensor(PIXEL_MEAN_BGR).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD_BGR).view(1, 3, 1, 1)
    return (bgr - mean) / std, torch.tensor(labels, dtype=torch.int64)


def build_classifier(quant_spec=None, init=None):
    """torchvision ResNet-18 (10 classes), loaded from `init` (path or state dict) if given, then
    converted by `quantize_model(model, quant_spec)` if a spec is given."""
    model = torchvision.models.resnet18(weights=None, num_classes=NUM_CLASSES)
    if init is not None:
        state = read_checkpoint(init)["model"] if isinstance(init, str) else init
        model.load_state_dict(state)
    if quant_spec is not None:
        quant_spec.validate()
        quantize_model(model, quant_spec)
    return model


def shift(images, generator):
    """Translate the batch by one random (dy, dx) in [-MAX_SHIFT, MAX_SHIFT] pixels, zero padded
    (zero = the mean pixel after normalization): the only augmentation. Scale jitter, polarity
    inversion and channel permutation were tried and cost val accuracy within the 5 min budget."""
    dy, dx = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2,), generator=generator).tolist()
    size = images.shape[-1]
    padded = F.pad(images, (MAX_SHIFT,) * 4)
    return padded[..., MAX_SHIFT + dy : MAX_SHIFT + dy + size, MAX_SHIFT + dx : MAX_SHIFT + dx + size]


@torch.no_grad()
def accuracy(model, images, labels, batch_size=256):
    """Top-1 accuracy (0..1) of `model` in eval mode."""
    model.eval()
    correct = sum((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
                  for i in range(0, len(labels), batch_size))
    return correct / max(len(labels), 1)


def _atomic_json(obj, path):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


def train_classifier(out_dir, *, epochs, lr, batch_size, seed, quant_spec=None, init=None,
                     root=None, size=DEFAULTS["size"], weight_decay=0.05):
    """Train the digit-crop ResNet-18 (FP32, or QAT with `quant_spec` from `init`); return metrics.

    AdamW (decoupled `weight_decay` on conv/linear weights only) with a per-step cosine learning
    rate from `lr` to 0, and `shift`. Deterministic for a given `seed`
    (single process, num_workers=0). Writes `out_dir/model_final.pth` and `out_dir/metrics.json`
    (atomically, after training); metrics hold top-1 accuracies (0..1) `train_acc` (eval mode, whole train split) and `val_acc`, the
    per-epoch `history` (mean loss, running train accuracy, val accuracy), the settings and the
    wall time `time_s`.
    """
    if quant_spec is not None and init is None:
        raise ValueError("a low-bit classifier is fine-tuned from an FP32 one: pass init=")
    start = time.time()
    torch.manual_seed(seed)
    train_x, train_y = load_digit_crops(root, "train", size)
    val_x, val_y = load_digit_crops(root, "val", size)
    data_time = time.time() - start
    model = build_classifier(quant_spec, init)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train_x, train_y), batch_size=batch_size, shuffle=True,
        drop_last=len(train_y) > batch_size, num_workers=0,
        generator=torch.Generator().manual_seed(seed))
    shift_gen = torch.Generator().manual_seed(seed + 1)
    # No decay on BN, biases and quantizer ranges (LSQ steps etc.): only conv/linear weights.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() > 1]},
                                   {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}],
                                  lr=lr, weight_decay=weight_decay)
    total_steps = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(total_steps, 1))))
    history = []
    train_start, step = time.time(), 0
    for epoch in range(epochs):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for batch, (images, labels) in enumerate(loader, 1):
            logits = model(shift(images, shift_gen))
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            step += 1
            if batch % PROGRESS_EVERY == 0:
                eta = (time.time() - train_start) / step * (total_steps - step)
                logger.info(f"epoch {epoch + 1}/{epochs} batch {batch}/{len(loader)} loss "
                            f"{loss_sum / seen:.4f}  eta: {timedelta(seconds=round(eta))}")
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "running_train_acc": correct / seen,
                        "val_acc": accuracy(model, val_x, val_y), "time_s": time.time() - start})
        logger.info("epoch %d/%d: %s", epoch + 1, epochs, history[-1])
    metrics = {
        "train_acc": accuracy(model, train_x, train_y),
        "val_acc": accuracy(model, val_x, val_y),
        "num_train": len(train_y), "num_val": len(val_y), "history": history,
        "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "size": size,
        "weight_decay": weight_decay, "quant_spec": None if quant_spec is None else {
            k: list(v) if isinstance(v, tuple) else v for k, v in vars(quant_spec).items()},
        "init": init if isinstance(init, str) or init is None else "<state dict>",
        "root": digits_det_root(root),
        "torch_threads": torch.get_num_threads(), "data_time_s": data_time,
        "time_s": time.time() - start,
    }
    os.makedirs(out_dir, exist_ok=True)
    atomic_torch_save(model.state_dict(), os.path.join(out_dir, MODEL_FILE))
    _atomic_json(metrics, os.path.join(out_dir, METRICS_FILE))
    return metrics

