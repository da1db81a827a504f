# Fresh machine: `make demo` sets everything up and runs the main job; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel; a bare `torch` requirement would pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The main job: a character LSTM on Shakespeare (`MINUTES=30 make demo` for a longer run),
# then a sample from it. Each run gets its own output directory (nothing is overwritten).
MINUTES ?= 5
OUT := runs/charlm-$(shell date +%Y%m%d-%H%M%S)
demo: setup
	$(VENV)/bin/rnnkit train charlm --max-minutes $(MINUTES) --out $(OUT)
	$(VENV)/bin/rnnkit sample --checkpoint $(OUT) --prime "ROMEO:" --temperature 0.8 --length 500 --seed 0

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check rnnkit tests benchmarks examples

bench: setup
	$(PY) benchmarks/layers.py
