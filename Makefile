# histo-lightning. `make demo` and `make test` install first when .venv is missing or the lock changed.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-all lint format bench clean

$(STAMP): pyproject.toml uv.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(VENV)/bin/uv sync --frozen --all-extras --python $(PY)
	touch $(STAMP)

## install: .venv with the exact locked versions (uv.lock) and the project editable
install: $(STAMP)

## demo: the headline experiment (CHS-Net cascade) end to end on SYNTHETIC TUPAC16 (generated on first use)
demo: install
	$(PY) run.py experiment=chsnet_demo

## test: the fast suite (CI runs this)
test: install
	$(PY) -m pytest -q

## test-all: the fast suite and the slow tests
test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## bench: loader vs train-step throughput; CHS-Net cascade detection speed; PAIP slide sampler speed; MIL bags; Rakhlin descriptors vs pure forward
bench: install
	$(PY) bench/loader_vs_step.py
	$(PY) bench/paip_sampler.py
	$(PY) bench/chsnet_detection.py
	$(PY) bench/mil_bags.py
	$(PY) bench/rakhlin_descriptors.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache logs
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
