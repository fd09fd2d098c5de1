"""What the speed benchmarks share: the torch thread option and loading SmolLM2 for inference."""
from __future__ import annotations

import argparse

import torch


def add_threads_option(ap: argparse.ArgumentParser) -> None:
    # One thread: on a busy 2-core machine, two OpenMP threads per process stall each other.
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def load_eval_model(args: argparse.Namespace):
    """SmolLM2-135M-Instruct (the default model) in eval mode, after applying `--threads`."""
    from igpo.config import ModelConfig
    from igpo.policy.loading import load_policy

    apply_threads(args)
    model, tok = load_policy(ModelConfig())
    model.eval()
    return model, tok
