"""What the speed benchmarks share: the torch thread option, loading SmolLM2 for inference, and the record of
where they ran and what their repeats say (`igpo.machine`, shared with `igpo bench learning`)."""

from __future__ import annotations

import argparse

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
]


def add_threads_option(ap: argparse.ArgumentParser) -> None:
    # One thread: on a busy 2-core machine, two OpenMP threads per process stall each other.
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def summaries(repeats: dict[str, list[float]]) -> dict[str, dict]:
    """`summarize` (n, median, min, max, q1, q3) of each named figure's repeats."""
    return {name: summarize(values) for name, values in repeats.items()}


def load_eval_model(args: argparse.Namespace):
    """SmolLM2-135M-Instruct (the default model) in eval mode, after applying `--threads`."""
    from igpo.config import ModelConfig
    from igpo.policy.loading import load_policy

    apply_threads(args)
    model, tok = load_policy(ModelConfig())
    model.eval()
    return model, tok
