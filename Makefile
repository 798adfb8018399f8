# The two commands of the README: `make demo` and `make test`. Both install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

.PHONY: install test demo
install: $(VENV)/.installed

test: $(VENV)/.installed
	bash .ci/services
	$(PY) -m pytest $(PYTEST_ARGS)
