PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-slow test-gpu gpu-check bench reproduce clean

$(BIN)/python:
	@echo "creating the virtual environment $(VENV)"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on --upgrade pip

# pip shows what it downloads and installs (torch and its CUDA libraries are most of the time: a few minutes
# on a fresh machine); a second `make install` with nothing changed only re-checks and takes seconds.
install: $(BIN)/python
	@echo "installing cxrtool and its dependencies into $(VENV) (pinned by constraints.txt)"
	@start=$$(date +%s); \
	$(BIN)/pip install --progress-bar on -c constraints.txt -e '.[test]' && \
	touch $(VENV)/.installed && \
	echo "installed in $$(( $$(date +%s) - start )) s: activate with 'source $(VENV)/bin/activate' or run $(BIN)/cxrtool"

# installed once, and again only when the dependencies change (so `make test` alone works on a fresh clone)
$(VENV)/.installed: pyproject.toml constraints.txt
	$(MAKE) install

# the tests need an installed environment, not a reinstall on every run; ruff first (rules in pyproject.toml)
test: $(VENV)/.installed
	$(BIN)/ruff check cxrtool tests bench examples
	$(BIN)/python -m pytest -q

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m slow

test-gpu: $(VENV)/.installed
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
