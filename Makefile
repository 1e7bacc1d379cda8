# `make demo` and `make test` work on a fresh machine: they create .venv when missing,
# install torch==2.13.0 first when no torch is importable there (a wider range pulls a
# multi-GB CUDA build on CPU machines), then mechscope with its test extra.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mechscope-installed
PROMPT ?= def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test]"
	# test oracle only: steering-vectors pins transformers 4, so it goes in without its dependencies
	$(PY) -m pip install --no-deps steering-vectors==0.12.2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	@test -f src/mechscope/zoo/weights/pycode/config.json || $(VENV)/bin/mechscope zoo train pycode
	$(VENV)/bin/mechscope info zoo:pycode
	$(VENV)/bin/mechscope report zoo:pycode --prompt "$$(printf '$(PROMPT)')" --out out/demo
	@echo "open out/demo/index.html in a browser"

test: setup
	$(PY) -m pytest -q

# fast checks CI runs before the tests: lint, formatting, types
lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/hooks.py

clean:
	rm -rf out .pytest_cache
