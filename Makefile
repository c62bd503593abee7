# Two entry points, both self-installing on a fresh clone:
#   make run    create .venv, install fmnist, train cnn-fast (the default), print its test accuracy
#   make test   create .venv, install fmnist with its test tools, run the test suite
#   make test-fast  the suite without the slow tests (training, subprocesses), ~1.5 min
# Both install every extra (fmnist[all]); `pip install fmnist` alone is the ONNX-serving core.
# Point at a local copy of the data with FMNIST_DATA_DIR=/path/to/fashion-mnist.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= cnn-fast
RUN_ARGS ?=

FUZZ_SECONDS ?= 600
FUZZ_DIR ?= runs/fuzz

.PHONY: run test test-fast fuzz install install-test clean docs docs-serve readme notes benchmarks-page default-model

run: $(VENV)/.installed
	$(BIN)/fmnist train --model $(MODEL) --tta $(RUN_ARGS)

# The suite runs in TEST_WORKERS processes (pytest-xdist): one per core, at most 4, since
# each slow test trains or starts TensorFlow with its own threads. TEST_WORKERS=0: one process.
TEST_WORKERS ?= auto
TEST_JOBS := -n $(TEST_WORKERS) $(if $(filter auto,$(TEST_WORKERS)),--maxprocesses=4)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(TEST_JOBS) $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow" $(TEST_JOBS) $(PYTEST_ARGS)

# Coverage-guided fuzzing for as long as asked (FUZZ_SECONDS, default 600): atheris over the
# image path with a growing corpus in $(FUZZ_DIR), then schemathesis over the API in rounds
# of fresh random seeds for the same time. Crashes land in $(FUZZ_DIR)/crash-*: copy them
# into tests/fuzz/regressions/ and fix the cause.
fuzz: $(VENV)/.installed-test
	mkdir -p $(FUZZ_DIR)/corpus
	$(BIN)/python tests/fuzz/corpus.py $(FUZZ_DIR)/corpus
	cd $(FUZZ_DIR) && $(CURDIR)/$(BIN)/python $(CURDIR)/tests/fuzz/fuzz_images.py corpus \
		$(CURDIR)/tests/fuzz/regressions -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=3072
	end=$$(( $$(date +%s) + $(FUZZ_SECONDS) )); while [ $$(date +%s) -lt $$end ]; do \
		FMNIST_FUZZ_EXAMPLES=500 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py \
			-k schemathesis --hypothesis-seed=$$RANDOM || exit 1; done

# The documentation site (mkdocs.yml): built strictly into site/, or previewed with reload.
docs: $(VENV)/.installed-test
	$(BIN)/mkdocs build --strict

docs-serve: $(VENV)/.installed-test
	$(BIN)/mkdocs serve

# Generated text, each from its one source: the README's presets table and the benchmarks
# page from bench.json, the experiment notes' tables from their results files. The suite
# fails when any of them disagrees with its source.
readme: $(VENV)/.installed
	$(BIN)/python scripts/readme_results.py

benchmarks-page: $(VENV)/.installed
	$(BIN)/fmnist bench render --json bench.json --markdown docs/benchmarks.md

# The model that ships in the package (src/fmnist/default_model/): cnn-fast, seed 0,
# trained, calibrated, evaluated and exported from source; about a minute and a half of
# training on a 2-core CPU.
default-model: $(VENV)/.installed
	$(BIN)/python scripts/default_model.py

notes: $(VENV)/.installed
	$(BIN)/python scripts/notes_tables.py

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.created
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.created
	$(BIN)/python -m pip install --quiet -e '.[all,test]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) build dist site *.egg-info src/*.egg-info
