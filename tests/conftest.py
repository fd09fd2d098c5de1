"""Shared fixtures: a tokenizer trained in the test session and tiny random Llama models (no downloads), built by
`igpo.testing`."""

from __future__ import annotations

import json
import os

import pytest
import torch

from igpo.testing import FACTS, QUESTIONS, make_tiny_llama, make_tokenizer

__all__ = ["FACTS", "QUESTIONS", "make_tiny_llama"]  # tests import these from here too

# question id, text, answers, bridge entity, oracle queries (the plan SFT demonstrations follow)
PLANS = [
    (
        "q1",
        "What is the capital of the country where the Eiffel Tower is?",
        ["Paris"],
        "France",
        ["Eiffel Tower", "France capital"],
    ),
    (
        "q2",
        "What is the capital of the country where the Colosseum is?",
        ["Rome"],
        "Italy",
        ["Colosseum", "Italy capital"],
    ),
    ("q3", "In which city is Big Ben?", ["London"], None, ["Big Ben"]),
    (
        "q4",
        "What is the anthem of the country where the Eiffel Tower is?",
        ["Marseillaise"],
        "France",
        ["Eiffel Tower", "Colosseum"],
    ),  # the second search does not find the answer: not grounded
]


# The device of the tests that take the `device` fixture (they carry the marker `device`): `pytest -m device` with
# IGPO_TEST_DEVICE=cuda runs them on a GPU (benchmarks/gpu_check.py does); default cpu.
DEVICE_ENV = "IGPO_TEST_DEVICE"


def pytest_configure(config):
    name = os.environ.get(DEVICE_ENV, "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise pytest.UsageError(f"{DEVICE_ENV}={name!r} is not a torch device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"{DEVICE_ENV}={name}: this torch sees no CUDA device")


def pytest_collection_modifyitems(items):
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """`$IGPO_TEST_DEVICE` (default cpu): where a test that takes it puts its models and tensors."""
    return torch.device(os.environ.get(DEVICE_ENV, "cpu"))


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE tokenizer (~600 tokens) with ChatML control tokens and a tool-less chat template."""
    return make_tokenizer()


def make_varied_llama(vocab_size: int, seed: int = 3):
    """A tiny random Llama with large weights, in eval mode, so that greedy outputs vary instead of repeating one
    token (rows of a batch stop at different steps)."""
    m = make_tiny_llama(vocab_size, seed=seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(20.0)
    return m.eval()


@pytest.fixture
def tiny_model(tokenizer):
    return make_tiny_llama(len(tokenizer))


@pytest.fixture
def tiny_model_dir(tokenizer, tmp_path):
    """A tiny Llama + tokenizer saved as a Hugging Face directory."""
    d = tmp_path / "tiny-llama"
    make_tiny_llama(len(tokenizer)).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def write_corpus(p):
    p.write_text("".join(json.dumps({"id": i, "contents": f"{t}\n{x}"}) + "\n" for i, t, x in FACTS))
    return p


def write_qa(p):
    rows = [
        {"id": i, "question": q, "answers": a, "source": "toy" if n % 2 else "toy2"}
        for n, (i, q, a) in enumerate(QUESTIONS)
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.fixture
def corpus_file(tmp_path):
    return write_corpus(tmp_path / "corpus.jsonl")


@pytest.fixture
def qa_file(tmp_path):
    return write_qa(tmp_path / "qa.jsonl")


@pytest.fixture
def plans_file(tmp_path):
    """QA JSONL whose rows carry `bridge` and `oracle_queries`, as VitalFactbook's do."""
    p = tmp_path / "plans.jsonl"
    p.write_text(
        "".join(
            json.dumps({"id": i, "question": q, "answers": a, "source": "toy", "bridge": b, "oracle_queries": oq})
            + "\n"
            for i, q, a, b, oq in PLANS
        )
    )
    return p
