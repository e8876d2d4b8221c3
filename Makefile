# d2_edwpose: `make demo` (the main job) and `make test` set up everything they need.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.d2_edwpose_setup
PYTEST_ARGS ?=

.PHONY: setup demo test test-all clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): setup.py d2_edwpose/bootstrap_env.py
	@[ -x $(PYTHON) ] || python3 -m venv $(VENV)
	$(PYTHON) d2_edwpose/bootstrap_env.py
	@touch $@

demo: setup
	$(PYTHON) -m d2_edwpose.tools.cpu_demo

# Default suite (< 10 min on 2 CPU cores); `make test-all` adds the slow end-to-end checks.
test: setup
	$(PYTHON) -m pytest -m "not slow" $(PYTEST_ARGS) tests

test-all: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) output
