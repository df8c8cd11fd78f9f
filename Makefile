# Two entry points for a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench

$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The lock pins every package; torch 2.13.0 (CPU build) comes from the local wheel cache.
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/steadyscribe run samples --output out
	$(BIN)/python scripts/query_demo.py out

test: setup
	$(BIN)/python -m pytest

# The benchmark's peers (faster-whisper with its VAD) and plotting come from the [bench] extra.
bench: setup
	$(BIN)/pip install --quiet -e '.[bench]'
	# stable-ts declares torchaudio, which does not load beside torch 2.13: installed without it,
	# it runs on the benchmark's stand-in (bench/standins/torchaudio).
	$(BIN)/pip install --quiet --no-deps stable-ts==2.19.1
	$(BIN)/python -m bench.run --quick
