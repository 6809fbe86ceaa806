# HistoDash: the two commands of the README quick start are `make run` and `make test`.
# Both create (or reuse) a virtual environment in $(VENV); nothing is downloaded at run time.

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8501
PYTEST_ARGS ?=
VIEWER := dashboard/components/viewer
VIEWER_JS := $(VIEWER)/frontend/node_modules/.package-lock.json

.PHONY: run test test-deps bench lint clean viewer-js

$(VENV)/.runtime: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-test.txt
	@touch $@

# The slide viewer's browser library (OpenSeadragon), pinned in package-lock.json, from the npm registry.
$(VIEWER_JS): $(VIEWER)/frontend/package.json $(VIEWER)/frontend/package-lock.json
	@bash $(VIEWER)/install_node.sh
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix $(VIEWER)/frontend --no-audit --no-fund --loglevel=error; \
	else echo "warning: npm is missing: the Slide heatmap page says how to install the viewer; its browser tests skip" >&2; fi

viewer-js: $(VIEWER_JS)

## Install the dashboard's dependencies and start it (http://$(HOST):$(PORT)).
run: $(VENV)/.runtime $(VIEWER_JS)
	$(PY) -m streamlit run dashboard/server.py --server.address=$(HOST) --server.port=$(PORT)

## System packages the tests use: Debian's chromium (browser tests) and R's survival package (reference numbers).
test-deps: $(VENV)/.test
	@bash tests/install_system_deps.sh

## Install what the tests need and run them.
test: test-deps $(VIEWER_JS)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.test $(VIEWER_JS)
	$(PY) bench/macenko.py
	$(PY) bench/heatmap.py
	$(PY) bench/train.py
	$(PY) bench/predict.py
	$(PY) bench/viewer.py
	$(PY) bench/cohort.py

lint: $(VENV)/.test
	$(PY) -m ruff check engine dashboard tests bench

clean:
	rm -rf $(VENV) .pytest_cache .histodash $(VIEWER)/frontend/node_modules
