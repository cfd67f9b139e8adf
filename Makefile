# trainyard: `make demo` runs the main job locally, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install dashboard demo test test-netns test-deploy images services arm-clients lint typecheck bench clean

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

# The deployment's images (Debian base, trainyard, worker, test stand-ins); cached, see the script.
images:
	nice -n 10 bash scripts/build-images.sh

# The Batch AI clients (azure-mgmt-batchai 7.0.0 and 2.0.0, azure-cli) the /arm tests drive, each in
# its own pinned venv; skipped when installed (`services` runs it too, like every install-*.sh).
arm-clients:
	nice -n 10 bash scripts/install-arm-clients.sh

test: install services images arm-clients
	$(PY) -m pytest -q -p no:cacheprovider

# Only docker-compose.yml run for real with podman-compose (also part of `make test`): needs root.
test-deploy: install services images
	$(PY) -m pytest -q -p no:cacheprovider tests/deploy

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
