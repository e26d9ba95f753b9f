"""Register digits-det in detectron2's DatasetCatalog/MetadataCatalog as digits_det_train/_val.

Why: configs name datasets (`DATASETS.TRAIN = ("digits_det_train",)`); registration must happen
before the trainer builds its loaders, and the data must exist. `register_digits_det()` generates
the default data once when missing (atomically, see `digits_det.make_split`) and registers both
splits. Where the data lives: `root` if given, else `$QUANT_DET_DATASETS/digits_det`, else
`datasets/digits_det` relative to the current working directory.

Example:
    register_digits_det()
    cfg.DATASETS.TRAIN = ("digits_det_train",); cfg.DATASETS.TEST = ("digits_det_val",)
"""
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .digits_det import ANNOTATIONS_FILE, CLASS_NAMES, IMAGES_DIR, SPLITS, build_digits_det

DATASETS_ENV = "QUANT_DET_DATASETS"
DEFAULT_DATASETS_ROOT = "datasets"

logger = logging.getLogger(__name__)


def digits_det_root(root=None):
    """The absolute directory holding digits-det: `root`, else `$QUANT_DET_DATASETS/digits_det`,
    else `datasets/digits_det` (relative to the current working directory). Absolute so that the
    registered paths stay valid if the process later changes directory."""
    if root is None:
        root = os.path.join(os.environ.get(DATASETS_ENV, DEFAULT_DATASETS_ROOT), "digits_det")
    return os.path.abspath(root)


def register_digits_det(root=None):
    """Generate digits-det under `root` if missing, register both splits, return their names.

    Idempotent: a second call with the same root changes nothing. A call with a different root
    re-registers the names to point there (logged as a warning), so the last call wins.
    Returns ("digits_det_train", "digits_det_val").
    """
    root = digits_det_root(root)
    build_digits_det(root, exist_ok=True)
    names = []
    for split in SPLITS:
        name = f"digits_det_{split}"
        json_file = os.path.join(root, split, ANNOTATIONS_FILE)
        image_root = os.path.join(root, split, IMAGES_DIR)
        names.append(name)
        if name in DatasetCatalog.list():
            old_json = MetadataCatalog.get(name).get("json_file")
            if old_json == json_file:
                continue
            logger.warning("Re-registering %s: json_file %s -> %s", name, old_json, json_file)
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda j=json_file, i=image_root, n=name: load_coco_json(j, i, n))
        MetadataCatalog.get(name).set(
            thing_classes=list(CLASS_NAMES),
            thing_dataset_id_to_contiguous_id={c + 1: c for c in range(len(CLASS_NAMES))},
            evaluator_type="coco",
            json_file=json_file,
            image_root=image_root,
        )
    return tuple(names)


def register_datasets_for(cfg):
    """Register (and build if missing) every quant_det data set named in cfg.DATASETS.

    Other names (e.g. detectron2's builtin coco_2017_*) are left to detectron2.
    """
    names = set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST)
    if any(n.startswith("digits_det_") for n in names):
        register_digits_det()
