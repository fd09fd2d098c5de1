"""`IGPO_TEST_DEVICE` picks the device of the tests marked `device`; a name torch does not know, or cuda where torch
sees no GPU, stops pytest before it runs anything, naming the variable (not a failure deep inside a test)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def collect(device: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "IGPO_TEST_DEVICE": device}
    cmd = [sys.executable, "-m", "pytest", "-q", "--collect-only", "-m", "device", "tests/algo/test_rewards_loss.py"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_an_unknown_device_is_a_usage_error_naming_the_variable():
    out = collect("gpu0")
    assert out.returncode == pytest.ExitCode.USAGE_ERROR
    assert "IGPO_TEST_DEVICE='gpu0' is not a torch device" in out.stderr + out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where torch sees no GPU (this CPU build)")
def test_cuda_without_a_gpu_is_a_usage_error():
    out = collect("cuda")
    assert out.returncode == pytest.ExitCode.USAGE_ERROR
    assert "IGPO_TEST_DEVICE=cuda: this torch sees no CUDA device" in out.stderr + out.stdout


def test_cpu_collects_the_device_tests():
    out = collect("cpu")
    assert out.returncode == pytest.ExitCode.OK, out.stdout[-2000:]
    assert "test_rewards_loss.py::" in out.stdout  # the loss tests take the `device` fixture: they are marked
