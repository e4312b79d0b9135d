# The two commands of the README: `make demo` and `make test`. Each creates .venv if it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.seglab-installed
# the fast tests run in this many pytest-xdist processes (each test on one thread: tests/conftest.py)
TEST_WORKERS ?= 2

.PHONY: demo test test-slow lint docs env browser

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/seglab demo

# Chromium and chromedriver for the web page's browser test (apt-get, when missing and run as root)
browser:
	bash scripts/install_browser.sh

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

docs: $(STAMP)
	$(BIN)/python scripts/gen_model_docs.py
	$(BIN)/python scripts/gen_dataset_docs.py
