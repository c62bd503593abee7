# Two entry points, both self-installing on a fresh clone:
#   make run    create .venv, install fmnist, train cnn-fast (the default), print its test accuracy
#   make test   create .venv, install fmnist with its test tools, run the test suite
# Point at a local copy of the data with FMNIST_DATA_DIR=/path/to/fashion-mnist.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= cnn-fast
RUN_ARGS ?=

.PHONY: run test install install-test clean

run: $(VENV)/.installed
	$(BIN)/fmnist train --model $(MODEL) --tta $(RUN_ARGS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.created
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.created
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
