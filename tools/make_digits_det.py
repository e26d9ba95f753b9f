#!/usr/bin/env python
"""Generate digits-det (COCO json + PNGs) from scikit-learn's bundled digits and photos.

Refuses to overwrite: a split that already exists under --out is an error; delete it to regenerate.

Example:
    python tools/make_digits_det.py --out datasets/digits_det --seed 0 --num-train 2000 --num-val 300
"""
import argparse
import json
import time

from quant_det.data import build_digits_det, digits_det_root


def int_at_least(low):
    """argparse type: an int >= `low` (argparse then names the option in its error)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is not allowed: an int >= {low}")
        return value
    return parse


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None,
                        help="output directory (default: $QUANT_DET_DATASETS/digits_det or datasets/digits_det)")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the digit pools and the images (>= 0)")
    parser.add_argument("--num-train", type=int_at_least(1), default=2000, help="number of train images")
    parser.add_argument("--num-val", type=int_at_least(1), default=300, help="number of val images")
    args = parser.parse_args()
    out = digits_det_root(args.out)
    start = time.perf_counter()
    try:
        paths = build_digits_det(out, seed=args.seed, num_train=args.num_train, num_val=args.num_val)
    except (FileExistsError, ValueError) as exc:
        parser.error(str(exc))
    for split, path in paths.items():
        with open(path) as f:
            coco = json.load(f)
        print(f"{split}: {len(coco['images'])} images, {len(coco['annotations'])} boxes -> {path}")
    print(f"done in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
