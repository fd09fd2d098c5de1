"""What the speed benchmarks share: the torch thread option, loading SmolLM2 for inference, and the record of
where they ran and what their repeats say (`igpo.machine`, shared with `igpo bench learning`)."""

from __future__ import annotations

import argparse
import os

import torch

from igpo.machine import load_average, machine_record, summarize

__all__ = [
    "add_threads_option",
    "apply_threads",
    "load_average",
    "load_eval_model",
    "machine_record",
    "summaries",
    "summarize",
    "vllm_settings",
]

# The CPU engine's settings that are environment variables: its KV cache (GiB) and its threads' core binding.
VLLM_ENV = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND")


def add_threads_option(ap: argparse.ArgumentParser) -> None:
    # One thread: on a busy 2-core machine, two OpenMP threads per process stall each other.
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def summaries(repeats: dict[str, list[float]]) -> dict[str, dict]:
    """`summarize` (n, median, min, max, q1, q3) of each named figure's repeats."""
    return {name: summarize(values) for name, values in repeats.items()}


def load_eval_model(args: argparse.Namespace, model_cfg=None):
    """The model `model_cfg` (an `igpo.config.ModelConfig`; default SmolLM2-135M-Instruct) in eval mode, after
    applying `--threads`."""
    from igpo.config import ModelConfig
    from igpo.policy.loading import load_policy

    apply_threads(args)
    model, tok = load_policy(model_cfg or ModelConfig())
    model.eval()
    return model, tok


def vllm_settings(cfg) -> dict:
    """The vLLM engine's settings `cfg` (an `igpo.config.Config`) builds it with, and the CPU engine's from the
    environment (`VLLM_ENV`)."""
    return {
        **cfg.rollout.vllm.model_dump(mode="json"),
        "max_model_len": cfg.rollout.max_context,
        "env": {k: os.environ.get(k) for k in VLLM_ENV},
    }
