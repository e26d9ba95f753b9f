"""Validate a COCO-format annotation file once, before a run trains or evaluates on it.

Why: detectron2 trains on a bbox with a negative width or height (it becomes a mirrored box),
and names a category id missing from `categories` without naming the file. Here each problem is
a ValueError naming the data set, the json file, the annotation id and the bad field.

Example:
    validate_coco_json("datasets/digits_det/train/annotations.json",
                       "datasets/digits_det/train/images", "DATASETS.TRAIN 'digits_det_train'")
"""
import json
import math
import os
from typing import Optional


def _bbox_problem(bbox) -> Optional[str]:
    """Why `bbox` is not a valid COCO [x, y, width, height], or None."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "is not [x, y, width, height]"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        return "holds a value that is not a finite number"
    if bbox[2] < 0 or bbox[3] < 0:
        side = "width" if bbox[2] < 0 else "height"
        return f"has a negative {side} (bbox is [x, y, width, height])"
    return None


def _annotation_problem(ann, image_ids, category_ids):
    """(field, why) for the first bad field of one annotation, or None."""
    if not isinstance(ann, dict):
        return "annotation", f"is a {type(ann).__name__}, not an object"
    if ann.get("image_id") not in image_ids:
        return "image_id", "names no entry of 'images'"
    if ann.get("category_id") not in category_ids:
        return "category_id", f"is not one of the 'categories' ids {sorted(category_ids)[:12]}"
    why = _bbox_problem(ann["bbox"]) if "bbox" in ann else None
    return ("bbox", why) if why else None


def _load(json_file, what):
    try:
        with open(json_file) as f:
            coco = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{what}: cannot load the annotations {json_file!r}: "
                         f"{type(e).__name__}: {e}") from e
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise ValueError(f"{what}: {json_file!r} is not a COCO annotation file (needs a top-level "
                         f"'images' list)")
    return coco


def validate_coco_json(json_file: str, image_root: Optional[str] = None, what: str = "") -> int:
    """Check a COCO json (and, with `image_root`, that its images exist); return its number of
    annotations. `what` (e.g. "DATASETS.TRAIN 'digits_det_train'") prefixes every message.

    Raises ValueError naming the file and, for a bad annotation, its id and field (category_id
    not in 'categories', image_id not in 'images', bbox not 4 finite numbers or with a negative
    width/height), or FileNotFoundError listing missing images.
    """
    what = what or "annotations"
    coco = _load(json_file, what)
    images = [im for im in coco["images"] if isinstance(im, dict)]
    if len(images) != len(coco["images"]) or any("id" not in im or "file_name" not in im for im in images):
        raise ValueError(f"{what}: {json_file!r}: every entry of 'images' needs 'id' and 'file_name'")
    annotations = coco.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{what}: {json_file!r}: 'annotations' is a {type(annotations).__name__}, not a list")
    image_ids = {im["id"] for im in images}
    category_ids = {c.get("id") for c in coco.get("categories", []) if isinstance(c, dict)}
    bad = [(ann, problem) for ann in annotations
           for problem in [_annotation_problem(ann, image_ids, category_ids)] if problem]
    if bad:
        ann, (field, why) = bad[0]
        ident = ann.get("id", "(no id)") if isinstance(ann, dict) else f"#{annotations.index(ann)}"
        value = ann.get(field) if isinstance(ann, dict) else ann
        more = f"; {len(bad) - 1} more annotation(s) are invalid" if len(bad) > 1 else ""
        raise ValueError(f"{what}: {json_file!r}: annotation id {ident}: {field} {value!r} {why}{more}")
    if image_root is not None:
        missing = [os.path.join(image_root, im["file_name"]) for im in images
                   if not os.path.isfile(os.path.join(image_root, im["file_name"]))]
        if missing:
            raise FileNotFoundError(f"{what}: {len(missing)} of {len(images)} images are missing, "
                                    f"e.g. {missing[:3]}")
    return len(annotations)
