# The two set-up commands of the README:
#   make demo [DATA_DIR=path]   environment + install + train and evaluate a robust MNIST model
#   make test                   environment + install + the test suite, slow tests included (what CI runs)
# and, while working:
#   make test-fast              the same without the tests marked slow (real-data training),
#                               about 3 min on 2 CPU cores (168 s measured with the cores busy)
# The environment is .venv; torch is pinned by constraints.txt (the version CI tests).
# Use another torch with CONSTRAINTS=your-file, or install advrep into your own environment.

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
DATA_DIR ?=
PYTEST_ARGS ?=
BIN := $(VENV)/bin

.PHONY: demo test test-fast install clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	# test-only oracle for advrep's PGD; --no-deps because its metadata pulls torchvision
	$(BIN)/pip install --quiet --no-deps torchattacks==3.5.1
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/advrep train --config configs/quickstart-mnist.yaml $(if $(DATA_DIR),--data-dir $(DATA_DIR))

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
