# The two commands of the README: `make demo` and `make test`. Both install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

.PHONY: install lint test demo screenshots
install: $(VENV)/.installed

# Unused or undefined names, unsorted imports, imports against the layers, and types (pyproject.toml).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check --no-cache .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

test: lint
	bash .ci/services
	$(PY) -m pytest $(PYTEST_ARGS)

# The seed guide's story end to end on this machine (Redis at REDIS_URL, else a private
# redis-server, else an in-process emulation), with a report; exit 0 when the ledger matches VINR.
demo: $(VENV)/.installed
	$(VENV)/bin/vinr-recon demo $(DEMO_ARGS)

# Refresh the README's dashboard pictures (docs/screenshots) from the browser tests; the charts' test runs
# last, so overview.png shows the charts (its ledger has traffic of the last days).
screenshots: $(VENV)/.installed
	bash .ci/services
	SCREENSHOTS_DIR=docs/screenshots $(PY) -m pytest -q tests/test_dashboard_browser.py tests/test_dashboard_charts_browser.py
