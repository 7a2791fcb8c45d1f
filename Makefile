# Two commands do all set-up on a fresh clone: `make test` and `make run`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test-prerequisites test test-long run smoke sweep-smoke serve ensemble lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# What pip cannot install (Chromium for the page's test): installed when the machine allows, else one
# sentence saying what to install, before anything runs.
test-prerequisites:
	@bash scripts/test_prerequisites.sh

# The suite (under 15 minutes on 2 cores); the long fault-injection and cluster tests: `make test-long`.
test: test-prerequisites $(STAMP)
	$(PY) -m pytest -m "not long" $(PYTEST_ARGS)

test-long: $(STAMP)
	$(PY) -m pytest -m long $(PYTEST_ARGS)

run: $(STAMP)
	$(PY) experiments/reproduce_baseline.py

smoke: $(STAMP)
	$(PY) experiments/reproduce_baseline.py --smoke --name smoke

sweep-smoke: $(STAMP)
	$(PY) experiments/tune_sweep.py --config experiments/configs/sweep_smoke.yaml

serve: $(STAMP)
	$(VENV)/bin/serve run serve.config

ensemble: $(STAMP)
	$(PY) experiments/build_ensemble.py --config experiments/configs/ensemble.yaml

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
