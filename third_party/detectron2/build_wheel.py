"""Build (once) and install a CPU-only detectron2 0.6 wheel from PyPI's `pb1-detectron2` sdist.

Why this exists: detectron2 is not on PyPI. `pb1-detectron2==0.6` republishes detectron2 v0.6's
Python sources but without the C++ sources, and v0.6 predates today's numpy/Pillow/setuptools/torch.
This script downloads that sdist (sha256-pinned), applies the source fixes listed in `FIXES` (each
with its reason; see ../../../shared/DEPENDENCIES.md for how they were found), builds a wheel with
`pip wheel --no-build-isolation` and caches it in `third_party/detectron2/cache/`, so a second run
reinstalls nothing.

If `import detectron2` already works in the target interpreter (e.g. a user's own CUDA build from
source), nothing is built and that detectron2 is left untouched.

Usage: python third_party/detectron2/build_wheel.py [--install] [--force]
"""
import argparse
import hashlib
import os
import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

SDIST_URL = (
    "https://files.pythonhosted.org/packages/60/26/"
    "48f5bbb7ee492696a21da23303daeecdfe3942c498a70d34108acf63b2bd/pb1-detectron2-0.6.tar.gz"
)
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
VERSION_SUFFIX = "+quantdet.cpu1"  # bump when FIXES change, so a cached wheel is rebuilt
CACHE = Path(__file__).resolve().parent / "cache"

# A pure-Python stand-in for the missing C++ extension `detectron2._C`. The detectors we use
# (RetinaNet, FCOS, ResNet/FPN) never call its ops; deformable/rotated ops and the "fast" COCO
# evaluator do, and then get a clear error instead of an ImportError at `import detectron2.layers`.
STANDIN_C = '''"""CPU-only stand-in for detectron2's C++ extension (written by quant_det's build_wheel.py).

This detectron2 was built without its C++/CUDA ops. Deformable conv, rotated boxes/ROIAlign and
COCOEvaluator(use_fast_impl=True) need them; use a source build of detectron2 for those.
"""


def get_compiler_version():
    return "none (pure-Python build by quant_det)"


def get_cuda_version():
    return "none"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def _missing(*args, **kwargs):
        raise NotImplementedError(
            f"detectron2._C.{name} is a C++ op, and this detectron2 was built without its C++ "
            "extension (quant_det's CPU build). Build detectron2 from source to use it."
        )

    return _missing
'''

# (file relative to the sdist root, regex, replacement, reason). Each must match at least once.
FIXES = [
    ("setup.py", r"ext_modules=get_extensions\(\),",
     "ext_modules=[],",
     "the sdist has no detectron2/layers/csrc, so the C++ extension cannot be built"),
    ("setup.py", r'package_data=\{"detectron2.model_zoo": get_model_zoo_configs\(\)\},',
     'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},',
     "get_model_zoo_configs() globs ./configs, absent in the sdist: the wheel would ship 0 "
     "model-zoo configs; the configs are already inside the package"),
    ("setup.py", r'name="pb1-detectron2",',
     'name="detectron2",',
     "install under detectron2's own distribution name"),
    ("detectron2/model_zoo/model_zoo.py", r"pkg_resources\.resource_filename\(\s*"
     r'"detectron2.model_zoo", os\.path\.join\("configs", config_path\)\s*\)',
     'os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", config_path)',
     "pkg_resources is gone from setuptools >= 81"),
    ("detectron2/model_zoo/model_zoo.py", r"^import pkg_resources\n", "",
     "pkg_resources is gone from setuptools >= 81"),
    ("detectron2/data/transforms/transform.py", r"Image\.LINEAR", "Image.BILINEAR",
     "Pillow >= 10 removed the Image.LINEAR alias"),
    ("detectron2/modeling/meta_arch/retinanet.py", r"get_norm\(norm, 1\)", "get_norm(norm, 32)",
     "probing the norm type with 1 channel fails for GN(32 groups) on torch 2"),
]
# numpy >= 1.24 removed the deprecated aliases np.int/bool/float/str/object: use the builtins.
NUMPY_ALIAS = re.compile(r"\bnp\.(int|bool|float|str|object)\b(?![0-9_])")


def detectron2_importable(python):
    """True if `python` can already import a working detectron2 (then we leave it alone)."""
    code = "import detectron2.modeling, detectron2.engine"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def fetch_sdist():
    """Return the path of the cached, checksum-verified sdist, downloading it if needed."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / SDIST_URL.rsplit("/", 1)[1]
    if not path.exists():
        print(f"[detectron2] downloading {SDIST_URL}")
        tmp = path.with_suffix(".part")
        with urllib.request.urlopen(SDIST_URL, timeout=120) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        tmp.rename(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        path.unlink()
        raise RuntimeError(f"{path}: sha256 {digest} != expected {SDIST_SHA256}; deleted it, rerun")
    return path


def apply_fixes(root):
    """Patch the extracted sdist in place; raise if a fix no longer matches its file."""
    for rel, pattern, repl, reason in FIXES:
        f = root / rel
        text, n = re.subn(pattern, repl, f.read_text(), flags=re.M)
        if n == 0:
            raise RuntimeError(f"fix for {rel} did not match ({reason}): {pattern}")
        f.write_text(text)
    for f in list((root / "detectron2").rglob("*.py")) + list((root / "projects").rglob("*.py")):
        text = f.read_text()
        new = NUMPY_ALIAS.sub(r"\1", text)
        if new != text:
            f.write_text(new)
    (root / "detectron2" / "_C.py").write_text(STANDIN_C)


def build_wheel(python):
    """Return the cached wheel, building it first if it is not there."""
    pattern = f"detectron2-0.6{VERSION_SUFFIX}-*.whl"
    wheels = sorted(CACHE.glob(pattern))
    if wheels:
        return wheels[-1]
    sdist = fetch_sdist()
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        root = Path(tmp) / "pb1-detectron2-0.6"
        apply_fixes(root)
        env = {**os.environ, "D2_VERSION_SUFFIX": VERSION_SUFFIX}
        subprocess.run(
            [python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(CACHE),
             str(root)], check=True, env=env)
    wheels = sorted(CACHE.glob(pattern))
    if not wheels:
        raise RuntimeError(f"pip wheel produced no detectron2 wheel in {CACHE}")
    return wheels[-1]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--install", action="store_true", help="pip install the wheel")
    p.add_argument("--force", action="store_true", help="rebuild even if detectron2 imports")
    args = p.parse_args()
    if not args.force and detectron2_importable(sys.executable):
        print("[detectron2] already importable; leaving it untouched")
        return
    if importlib.util.find_spec("torch") is None:
        raise SystemExit("[detectron2] install torch first: the build imports it")
    wheel = build_wheel(sys.executable)
    print(f"[detectron2] wheel: {wheel}")
    if args.install:
        subprocess.run([sys.executable, "-m", "pip", "install", str(wheel)], check=True)


if __name__ == "__main__":
    main()
