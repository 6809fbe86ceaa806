# HistoDash: the two commands of the README quick start are `make run` and `make test`.
# Both create (or reuse) a virtual environment in $(VENV); nothing is downloaded at run time.

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8501
PYTEST_ARGS ?=

.PHONY: run test test-deps bench lint clean

$(VENV)/.runtime: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-test.txt
	@touch $@

## Install the dashboard's dependencies and start it (http://$(HOST):$(PORT)).
run: $(VENV)/.runtime
	$(PY) -m streamlit run dashboard/server.py --server.address=$(HOST) --server.port=$(PORT)

## System packages the tests use: Debian's chromium (browser tests) and R's survival package (reference numbers).
test-deps: $(VENV)/.test
	@bash tests/install_system_deps.sh

## Install what the tests need and run them.
test: test-deps
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.test
	$(PY) bench/macenko.py
	$(PY) bench/heatmap.py
	$(PY) bench/train.py
	$(PY) bench/predict.py
	$(PY) bench/cohort.py

lint: $(VENV)/.test
	$(PY) -m ruff check engine dashboard tests bench

clean:
	rm -rf $(VENV) .pytest_cache .histodash
