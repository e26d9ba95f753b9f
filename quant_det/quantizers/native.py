"""The LQ-Net encoding kernel (`lqnet_kernel.c`): built with the system C compiler on first use,
loaded with ctypes, and called on contiguous float32 CPU tensors.

The shared library is cached in `$QUANT_DET_CACHE` (default `~/.cache/quant_det`) under a name
that hashes the source, the compile command and the platform, so a changed source or machine gets
a fresh build (about 0.3 s). `QUANT_DET_NATIVE=0` turns the kernel off; any build or load failure
(no compiler, read-only cache) logs one warning and the callers fall back to torch ops, which give
the same numbers.
"""
import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
import threading

import torch

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lqnet_kernel.c")
_FLAGS = ["-O3", "-shared", "-fPIC", "-std=c99", "-fno-strict-aliasing"]
_lock = threading.Lock()
_lib = None
_tried = False
logger = logging.getLogger(__name__)


def cache_dir():
    """Where built kernels are kept: $QUANT_DET_CACHE or ~/.cache/quant_det."""
    default = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "quant_det")
    return os.environ.get("QUANT_DET_CACHE") or default


def _build():
    compiler = os.environ.get("CC", "cc")
    with open(_SOURCE, "rb") as f:
        source = f.read()
    command = [compiler] + _FLAGS
    key = hashlib.sha256(source + " ".join(command).encode() + platform.platform().encode()
                         + platform.machine().encode()).hexdigest()[:16]
    target = os.path.join(cache_dir(), f"lqnet_kernel_{key}.so")
    if not os.path.exists(target):
        os.makedirs(cache_dir(), exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir())
        os.close(fd)
        try:
            subprocess.run(command + ["-o", tmp, _SOURCE, "-lpthread"], check=True, capture_output=True,
                           timeout=120)
            os.replace(tmp, target)  # atomic: concurrent builders (DDP ranks) never see half a file
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    lib = ctypes.CDLL(target)
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.lqnet_encode.argtypes = [p, i64, i64, p, p, ctypes.c_int, p, i64, p, p, ctypes.c_int]
    lib.lqnet_encode.restype = ctypes.c_int
    lib.lqnet_level_stats.argtypes = [p, p, i64, i64, ctypes.c_int, p, p]
    lib.lqnet_level_stats.restype = ctypes.c_int
    return lib


def library():
    """The loaded kernel library, or None when it is turned off or cannot be built here."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            if os.environ.get("QUANT_DET_NATIVE", "1") != "0":
                try:
                    _lib = _build()
                except (OSError, subprocess.SubprocessError) as e:
                    detail = getattr(e, "stderr", b"") or b""
                    logger.warning("LQ-Net kernel not built (%s %s); using torch.searchsorted instead",
                                   e, detail.decode(errors="replace")[:500])
            _tried = True
    return _lib


def lqnet_encode(flat, thresholds, values, stride=0):
    """Nearest levels of `flat` [O, M] (float32, CPU) under sorted `values` [O, L] / midpoints
    `thresholds` [O, L-1]; returns (q [O, M], stats) where stats = None (stride 0) or the per-level
    (count [O, L] int64, sum [O, L] float64) of the columns ::stride, the QEM sample, equal to
    torch.bincount's. Caller checks `library()` first."""
    lib = library()
    flat = flat.contiguous()
    thresholds = thresholds.contiguous()
    values = values.contiguous()
    rows, cols = flat.shape
    levels = values.shape[1]
    q = torch.empty_like(flat)
    sample_index = sample_x = None
    if stride > 0:
        samples = (cols + stride - 1) // stride
        sample_index = torch.empty(rows, samples, dtype=torch.int64)
        sample_x = torch.empty(rows, samples, dtype=flat.dtype) if stride > 1 else flat
    lib.lqnet_encode(flat.data_ptr(), rows, cols, thresholds.data_ptr(), values.data_ptr(), levels,
                     q.data_ptr(), max(stride, 1), sample_index.data_ptr() if sample_index is not None else None,
                     sample_x.data_ptr() if stride > 1 else None, torch.get_num_threads())
    if stride == 0:
        return q, None
    count = torch.empty(rows, levels, dtype=torch.int64)
    total = torch.empty(rows, levels, dtype=torch.float64)
    lib.lqnet_level_stats(sample_index.data_ptr(), sample_x.data_ptr(), rows, sample_index.shape[1], levels,
                          count.data_ptr(), total.data_ptr())
    return q, (count, total)
