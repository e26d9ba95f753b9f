"""digits-det: determinism, box geometry and tightness, class coverage, disjoint splits, registration."""
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from sklearn.datasets import load_digits

from quant_det.data import digits_det, register_digits_det
from quant_det.data.digits_det import (
    ALPHA_THRESHOLD, LUMA, build_digits_det, make_split, split_digit_pools,
)

NUM_TRAIN, NUM_VAL, SIZE = 12, 6, 128


def _load(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def dataset(module_tmp):
    root = module_tmp("datasets") / "digits_det"
    paths = build_digits_det(str(root), seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL)
    return root, {split: _load(path) for split, path in paths.items()}


def test_same_seed_is_byte_identical_and_other_seed_differs(dataset, tmp_path):
    root, _ = dataset
    again = make_split(str(tmp_path / "a"), "val", 0, NUM_VAL)
    other = make_split(str(tmp_path / "b"), "val", 1, NUM_VAL)
    with open(root / "val" / "annotations.json", "rb") as f:
        reference = f.read()
    assert open(again, "rb").read() == reference
    for name in sorted(os.listdir(root / "val" / "images")):
        assert (tmp_path / "a" / "val" / "images" / name).read_bytes() == (root / "val" / "images" / name).read_bytes()
    assert _load(other)["annotations"] != _load(again)["annotations"]


def test_images_and_boxes_are_valid(dataset):
    _, coco = dataset
    for split, num_images in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        images = coco[split]["images"]
        assert [im["id"] for im in images] == list(range(1, num_images + 1))
        assert all(im["height"] == SIZE and im["width"] == SIZE for im in images)
        per_image = np.bincount([a["image_id"] for a in coco[split]["annotations"]], minlength=num_images + 1)[1:]
        assert per_image.min() >= 1 and per_image.max() <= 4
        for ann in coco[split]["annotations"]:
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
            assert 2 <= h <= 48 and 1 <= w <= 48  # a digit "1" can be a thin stroke
            assert ann["area"] == w * h and ann["iscrowd"] == 0


def test_box_is_tight_around_visible_pixels():
    """On a black background the painted luma is alpha * opacity * luma(colour), so pixels
    outside the box stay <= ALPHA_THRESHOLD * peak and every box edge holds a brighter pixel."""
    digits = load_digits()
    rng = np.random.Generator(np.random.PCG64(0))
    for index in (1, 2, 9, 10):  # a "1", "2", "9", "0" whose peak intensity is 16: alpha reaches 1
        assert digits.images[index].max() == 16
        img = np.zeros((SIZE, SIZE, 3), dtype=np.float32)
        x, y, w, h = digits_det._paste_digit(rng, img, digits.images[index], (16, 48), [], 0.1)
        luma = img @ LUMA
        peak = luma.max()
        inside = np.zeros_like(luma, dtype=bool)
        inside[y : y + h, x : x + w] = True
        assert peak >= 70 * 0.75 * 0.99  # contrast >= 70 luma, opacity >= 0.75
        assert luma[~inside].max() <= ALPHA_THRESHOLD * peak * 1.01
        edges = [luma[y, x : x + w], luma[y + h - 1, x : x + w], luma[y : y + h, x], luma[y : y + h, x + w - 1]]
        assert all(edge.max() >= ALPHA_THRESHOLD * peak * 0.99 for edge in edges)


def test_every_class_in_each_split(dataset):
    _, coco = dataset
    for split in ("train", "val"):
        assert {a["category_id"] for a in coco[split]["annotations"]} == set(range(1, 11))
        assert [(c["id"], c["name"]) for c in coco[split]["categories"]] == [(i + 1, str(i)) for i in range(10)]


def test_train_and_val_digits_are_disjoint(dataset):
    _, coco = dataset
    digits = load_digits()
    pools = split_digit_pools(0)
    assert len(np.intersect1d(pools["train"], pools["val"])) == 0
    assert len(pools["train"]) + len(pools["val"]) == 1797
    assert 0.19 < len(pools["val"]) / 1797 < 0.21
    for split in ("train", "val"):
        assert set(digits.target[pools[split]]) == set(range(10))
        used = [a["digit_index"] for a in coco[split]["annotations"]]
        assert set(used) <= set(pools[split].tolist())
        assert all(digits.target[a["digit_index"]] == a["category_id"] - 1 for a in coco[split]["annotations"])


def test_interrupted_generation_leaves_no_split(tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(digits_det, "_render_split", interrupt)
    with pytest.raises(KeyboardInterrupt):
        make_split(str(tmp_path), "train", 0, NUM_TRAIN)
    assert os.listdir(tmp_path) == []


def test_make_split_refuses_overwrite_and_bad_arguments(dataset):
    root, _ = dataset
    with pytest.raises(FileExistsError, match="val already exists"):
        make_split(str(root), "val", 0, NUM_VAL)
    with pytest.raises(ValueError, match="'test' is not one of"):
        make_split(str(root), "test", 0, NUM_VAL)
    with pytest.raises(ValueError, match="num_images >= 3"):
        make_split(str(root), "val", 0, 2)


def test_registration_gives_detectron2_dicts(dataset, monkeypatch):
    root, coco = dataset
    monkeypatch.setenv("QUANT_DET_DATASETS", str(root.parent))
    try:
        assert register_digits_det() == ("digits_det_train", "digits_det_val")
        assert register_digits_det() == ("digits_det_train", "digits_det_val")  # idempotent
        meta = MetadataCatalog.get("digits_det_val")
        assert meta.thing_classes == [str(c) for c in range(10)]
        assert meta.evaluator_type == "coco"
        assert meta.json_file == str(root / "val" / "annotations.json")
        assert meta.image_root == str(root / "val" / "images")
        dicts = DatasetCatalog.get("digits_det_val")
        assert len(dicts) == NUM_VAL
        assert os.path.isfile(dicts[0]["file_name"])
        anns = [a for d in dicts for a in d["annotations"]]
        assert len(anns) == len(coco["val"]["annotations"])
        assert {a["category_id"] for a in anns} == set(range(10))
        assert all(a["bbox_mode"] == BoxMode.XYWH_ABS for a in anns)
        expected = sorted((a["image_id"], tuple(a["bbox"]), a["category_id"] - 1) for a in coco["val"]["annotations"])
        got = sorted((d["image_id"], tuple(a["bbox"]), a["category_id"]) for d in dicts for a in d["annotations"])
        assert got == expected
    finally:
        for name in ("digits_det_train", "digits_det_val"):
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
