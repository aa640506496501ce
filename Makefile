# Pinned so that a fresh machine installs the CPU build of torch from its local
# wheel cache; an unpinned torch pulls a multi-GB CUDA build from PyPI.
TORCH_VERSION ?= 2.13.0
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: all install test run bench clean

all: test

$(BIN)/activate: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/pip install --quiet -e ".[test,run]"
	touch $(BIN)/activate

install: $(BIN)/activate

# pytest exits with 5 when it collects no tests, which is not a failure of the code.
test: install
	$(BIN)/python -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; \
	exit $$status

run: install
	$(BIN)/lossgrad run

bench: install
	$(BIN)/lossgrad bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
