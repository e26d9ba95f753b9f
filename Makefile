# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use (torch, detectron2 built by third_party/, quant_det editable);
# the stamp file makes a second run reinstall nothing.
# To reuse your own torch + detectron2 (e.g. a CUDA build from source):
#   make demo VENV_FLAGS=--system-site-packages
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.quant_det-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-fast bench bench-peers clean-venv

install: $(STAMP)

$(STAMP): setup.py third_party/detectron2/build_wheel.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || \
		$(PY) -m pip install $(TORCH_PINS) "setuptools>=77.0.3,<81" wheel
	@$(PY) -c "import setuptools, wheel" 2>/dev/null || $(PY) -m pip install "setuptools>=77.0.3,<81" wheel
	$(PY) third_party/detectron2/build_wheel.py --install
	$(PY) -m pip install --no-build-isolation -e ".[test,export]"
	@touch $@

demo: install
	$(PY) tools/demo.py

test: install
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -x --durations=15

# The peers (torchao, brevitas, NNCF) are optional: `make bench-peers` installs them without
# touching torch/torchvision/numpy (pip constraints from the venv's current versions).
bench: install
	$(PY) benchmarks/bench_quantizers.py
	$(PY) benchmarks/bench_qat_step.py
	$(PY) benchmarks/bench_onnx_speed.py
	$(PY) benchmarks/bench_peers.py

bench-peers: install
	$(PY) -m pip freeze | grep -iE '^(torch|torchvision|numpy)==' > $(VENV)/bench-constraints.txt
	$(PY) -m pip install --no-build-isolation -e ".[test,export,bench]" -c $(VENV)/bench-constraints.txt
	NNCF_EXTENSION_LOAD_TIMEOUT=0 $(PY) benchmarks/bench_peers.py

clean-venv:
	rm -rf $(VENV)
