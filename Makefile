PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-slow test-gpu gpu-check bench reproduce clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	@echo "installed: activate with 'source $(VENV)/bin/activate' or run $(BIN)/cxrtool"

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

test-gpu: install
	$(BIN)/python -m pytest -q -m gpu

# one NVIDIA GPU: installs the [trt] extra if absent, runs test-gpu, then a short benchmark (< 8 min);
# writes runs/gpu-check/gpu_check.json + .txt; on a machine without CUDA it stops at once ("no CUDA device")
gpu-check: install
	$(BIN)/python bench/gpu_check.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

bench: install
	$(BIN)/python bench/prep_dicom.py --agreement
	$(BIN)/python bench/train_throughput.py --size 64 --batch 16
	$(BIN)/python bench/explain.py
	$(BIN)/python bench/predict_pipeline.py --images 64
	$(BIN)/python bench/int8.py
	$(BIN)/python bench/trust.py

reproduce: install
	$(BIN)/python examples/reproduce.py --data ../shared/data
