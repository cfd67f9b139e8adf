# trainyard: `make demo` runs the main job locally, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install dashboard demo test test-netns services lint typecheck bench clean

install: $(STAMP) dashboard

# The dashboard's vendored front-end files (htmx) from web/package-lock.json; skipped when built.
dashboard:
	bash scripts/build-dashboard.sh

# Reinstall only when the lock or the project metadata change.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: install
	$(VENV)/bin/trainyard demo

services:
	bash scripts/ensure-services.sh

test: install services
	$(PY) -m pytest -q -p no:cacheprovider

# Only the nodes-as-separate-hosts suite (also part of `make test`): needs root for its namespaces.
test-netns: install services
	$(PY) -m pytest -q -p no:cacheprovider tests/netns

lint: install
	$(VENV)/bin/ruff check trainyard tests bench
	$(VENV)/bin/ruff format --check trainyard tests bench
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .trainyard .pytest_cache .mypy_cache .ruff_cache web/node_modules
