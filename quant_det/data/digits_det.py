"""digits-det: a small, deterministic detection data set built only from data shipped in scikit-learn.

Why: CPU benchmarks need a detection task that trains in minutes and needs no download. Each
128x128 RGB image is a jittered crop of one of scikit-learn's two sample photos (china.jpg,
flower.jpg) with 1-4 UCI handwritten digits (`load_digits`, 8x8, 10 classes) pasted at 16-48 px,
random positions, colours and contrast. Train and val paste disjoint digit instances, so val AP
measures generalization to unseen handwriting.

Layout written by `make_split(out_dir, split, ...)` (one directory per split, renamed into place
atomically so a half-written split never exists under its final name):

    out_dir/<split>/annotations.json   COCO json; category ids 1..10 named "0".."9"; each
                                       annotation also records its source "digit_index"
    out_dir/<split>/images/000000.png  lossless PNG, so pixels are identical on every machine

Example:
    build_digits_det("datasets/digits_det", seed=0, num_train=2000, num_val=300)
"""
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

SPLITS = ("train", "val")
NUM_CLASSES = 10
CLASS_NAMES = [str(c) for c in range(NUM_CLASSES)]
ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"
# A pixel belongs to the digit's box when its upsampled intensity (0..1) exceeds this.
ALPHA_THRESHOLD = 0.3
PLACEMENT_ATTEMPTS = 30
# Defaults of make_split: image side, digit height range and digits per image (inclusive).
IMAGE_SIZE = 128
DIGIT_SIZE = (16, 48)
DIGITS_PER_IMAGE = (1, 4)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 RGB -> luma


def split_digit_pools(seed, val_fraction=0.2):
    """Return {"train": indices, "val": indices}: disjoint, sorted indices into `load_digits()`.

    Stratified per class, so both pools hold every class. Depends only on `seed` and
    `val_fraction`: build both splits with the same seed or their pools may overlap.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r} must lie strictly between 0 and 1")
    targets = load_digits().target
    rng = np.random.Generator(np.random.PCG64([seed, 0]))
    pools = {"train": [], "val": []}
    for c in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(targets == c))
        num_val = max(1, int(round(len(members) * val_fraction)))
        pools["val"].extend(members[:num_val].tolist())
        pools["train"].extend(members[num_val:].tolist())
    return {split: np.array(sorted(idx), dtype=np.int64) for split, idx in pools.items()}


def _background(rng, photos, size):
    """A random square crop of a random photo, resized to `size`, flipped and brightness-jittered."""
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.integers(size - size // 4, min(h, w) + 1))
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
    img = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    mean = img.mean()
    img = (img - mean) * rng.uniform(0.7, 1.2) + mean * rng.uniform(0.6, 1.3)
    return np.clip(img, 0.0, 255.0)


def _digit_alpha(digit, width, height):
    """The 8x8 digit (0..16) upsampled bicubically to height x width, as an alpha map in 0..1."""
    small = Image.fromarray((digit / 16.0).astype(np.float32))  # float32 -> mode "F"
    return np.clip(np.asarray(small.resize((width, height), Image.BICUBIC)), 0.0, 1.0)


def _paint_colour(rng, region, alpha):
    """An RGB colour whose luma differs by 70..160 (clipped to 0..255) from the background under
    `alpha`: dark on bright backgrounds, light on dark ones, with a random hue."""
    background = float((region @ LUMA * alpha).sum() / alpha.sum())
    gap = rng.uniform(70.0, 160.0)
    hue = rng.uniform(0.0, 1.0, size=3)
    if background > 127.5:
        target = max(0.0, background - gap)
        return np.clip(hue * target / max(float(hue @ LUMA), 1e-3), 0.0, 255.0)
    target = min(255.0, background + gap)
    return np.clip(255.0 - (1.0 - hue) * (255.0 - target) / max(float((1.0 - hue) @ LUMA), 1e-3), 0.0, 255.0)


def _box_iou(a, b):
    """IoU of two XYWH boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


def _paste_digit(rng, img, digit, size_range, placed, max_iou):
    """Paste `digit` into `img` in place at a spot whose box overlaps `placed` boxes by <= max_iou.

    Returns the tight XYWH box (ints) of the visible pixels, or None when no spot was found.
    """
    size = img.shape[0]
    for _ in range(PLACEMENT_ATTEMPTS):
        ph = int(rng.integers(size_range[0], size_range[1] + 1))
        pw = max(size_range[0], int(round(ph * rng.uniform(0.8, 1.0))))
        alpha = _digit_alpha(digit, pw, ph)
        rows = np.flatnonzero((alpha > ALPHA_THRESHOLD).any(axis=1))
        cols = np.flatnonzero((alpha > ALPHA_THRESHOLD).any(axis=0))
        y, x = int(rng.integers(size - ph + 1)), int(rng.integers(size - pw + 1))
        box = [x + int(cols[0]), y + int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
        if all(_box_iou(box, other) <= max_iou for other in placed):
            break
    else:
        return None
    region = img[y : y + ph, x : x + pw]
    colour = _paint_colour(rng, region, alpha)
    a = (alpha * rng.uniform(0.75, 1.0))[:, :, None]
    img[y : y + ph, x : x + pw] = region * (1.0 - a) + colour * a
    return box


def _validate(split, num_images, image_size, digit_size, digits_per_image):
    """Raise ValueError naming the bad argument before any file is written."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    lo, hi = digits_per_image
    if not 1 <= lo <= hi:
        raise ValueError(f"digits_per_image={digits_per_image!r} must satisfy 1 <= min <= max")
    if num_images * hi < NUM_CLASSES:
        raise ValueError(
            f"num_images={num_images} with at most {hi} digits per image cannot show all "
            f"{NUM_CLASSES} classes; need num_images >= {-(-NUM_CLASSES // hi)}"
        )
    if not 8 <= digit_size[0] <= digit_size[1] <= image_size:
        raise ValueError(f"digit_size={digit_size!r} must satisfy 8 <= min <= max <= image_size={image_size}")


def _render_split(image_dir, split, seed, num_images, image_size, digit_size, digits_per_image,
                  max_iou, val_fraction):
    """Write the PNGs of one split into `image_dir`; return the COCO dict (no absolute paths)."""
    digits = load_digits()
    photos = load_sample_images().images
    pool = split_digit_pools(seed, val_fraction)[split]
    by_class = [pool[digits.target[pool] == c] for c in range(NUM_CLASSES)]
    rng = np.random.Generator(np.random.PCG64([seed, 1 + SPLITS.index(split)]))
    # Classes still owed to the split: placed first so every class appears at least once.
    owed = rng.permutation(NUM_CLASSES).tolist()
    images, annotations = [], []
    for image_id in range(1, num_images + 1):  # COCO ids start at 1
        img = _background(rng, photos, image_size)
        images_left = num_images - image_id + 1
        count = int(rng.integers(digits_per_image[0], digits_per_image[1] + 1))
        count = min(digits_per_image[1], max(count, -(-len(owed) // images_left)))
        placed = []
        for _ in range(count):
            cls = owed[0] if owed else int(rng.integers(NUM_CLASSES))
            index = int(rng.choice(by_class[cls]))
            box = _paste_digit(rng, img, digits.images[index], digit_size, placed, max_iou)
            if box is None:
                continue
            if owed and owed[0] == cls:
                owed.pop(0)
            placed.append(box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                "bbox": box, "area": box[2] * box[3], "iscrowd": 0, "digit_index": index,
            })
        file_name = f"{image_id:06d}.png"
        pixels = np.rint(img).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(image_dir, file_name), compress_level=6)
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
    if owed:
        raise RuntimeError(f"digits-det {split} (seed={seed}) misses classes {sorted(owed)}; add images")
    return {
        "info": {
            "description": f"digits-det {split}", "seed": seed, "image_size": image_size,
            "digit_size": list(digit_size), "digits_per_image": list(digits_per_image),
            "max_iou": max_iou, "val_fraction": val_fraction,
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c + 1, "name": n, "supercategory": "digit"} for c, n in enumerate(CLASS_NAMES)],
    }


def make_split(out_dir, split, seed, num_images, *, image_size=IMAGE_SIZE, digit_size=DIGIT_SIZE,
               digits_per_image=DIGITS_PER_IMAGE, max_iou=0.1, val_fraction=0.2):
    """Generate one split into `out_dir/<split>/` and return the path of its annotations.json.

    A pure function of its arguments: the same arguments give byte-identical json and pixel-
    identical images. The split is written into a temporary directory under `out_dir` and
    renamed into place, so an interrupted run leaves no partial `out_dir/<split>`.
    Raises FileExistsError if `out_dir/<split>` already exists (delete it to regenerate).
    """
    _validate(split, num_images, image_size, digit_size, digits_per_image)
    final_dir = os.path.join(out_dir, split)
    if os.path.exists(final_dir):
        raise FileExistsError(f"{final_dir} already exists; delete it to regenerate digits-det {split}")
    os.makedirs(out_dir, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".tmp-{split}-", dir=out_dir)
    try:
        os.makedirs(os.path.join(tmp_dir, IMAGES_DIR))
        coco = _render_split(os.path.join(tmp_dir, IMAGES_DIR), split, seed, num_images, image_size,
                             tuple(digit_size), tuple(digits_per_image), max_iou, val_fraction)
        with open(os.path.join(tmp_dir, ANNOTATIONS_FILE), "w") as f:
            json.dump(coco, f, sort_keys=True)
        try:
            os.rename(tmp_dir, final_dir)
        except OSError as exc:
            raise FileExistsError(f"{final_dir} appeared while generating (another process?)") from exc
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return os.path.join(final_dir, ANNOTATIONS_FILE)


def build_digits_det(root, seed=0, num_train=2000, num_val=300, exist_ok=False, **split_kwargs):
    """Generate both splits under `root`; return {"train": json path, "val": json path}.

    Both splits use the same `seed`, so their digit pools are disjoint. With `exist_ok=True` a
    split already present (or finished concurrently by another process) is kept as it is.
    """
    sizes = {"train": num_train, "val": num_val}
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} is not allowed: an int >= 0")
    for split, num_images in sizes.items():  # fail before writing anything
        _validate(split, num_images, split_kwargs.get("image_size", IMAGE_SIZE),
                  split_kwargs.get("digit_size", DIGIT_SIZE), split_kwargs.get("digits_per_image", DIGITS_PER_IMAGE))
    paths = {}
    for split, num_images in sizes.items():
        json_path = os.path.join(root, split, ANNOTATIONS_FILE)
        if exist_ok and os.path.exists(json_path):
            paths[split] = json_path
            continue
        try:
            paths[split] = make_split(root, split, seed, num_images, **split_kwargs)
        except FileExistsError:
            if not (exist_ok and os.path.exists(json_path)):
                raise
            paths[split] = json_path
    return paths
