"""Data sets for quant_det: digits-det, the deterministic CPU benchmark built from scikit-learn data."""
from .digits_det import CLASS_NAMES, build_digits_det, make_split, split_digit_pools
from .register import digits_det_root, register_datasets_for, register_digits_det

__all__ = [
    "CLASS_NAMES",
    "build_digits_det",
    "digits_det_root",
    "make_split",
    "register_datasets_for",
    "register_digits_det",
    "split_digit_pools",
]
