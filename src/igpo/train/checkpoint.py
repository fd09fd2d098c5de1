"""Checkpoints: `step_NNNNNN/` folders written atomically (temp folder, then rename), the last N kept.

A checkpoint holds the model (`save_pretrained`: full weights, or the LoRA adapter), the tokenizer, and
`trainer_state.pt` (step, optimizer, scheduler, RNG states). A folder without `trainer_state.pt` or whose state
cannot be read is incomplete: skipped with a warning.
"""
from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)
STATE = "trainer_state.pt"


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    root = Path(out_dir) / "checkpoints"
    return sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))


def save_checkpoint(out_dir: Path, step: int, model, tokenizer, optimizer, scheduler, keep_last: int, *,
                    model_state: dict | None = None, optimizer_state: dict | None = None) -> Path:
    """`model_state` / `optimizer_state` replace the live objects' state dicts (a sharded model's, gathered)."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, **({} if model_state is None else {"state_dict": model_state}))
    tokenizer.save_pretrained(tmp)
    torch.save({
        "step": step,
        "optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
    }, tmp / STATE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoint_dirs(out_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: Path) -> tuple[Path, dict] | None:
    """The newest complete checkpoint and its trainer state, or None."""
    for ckpt in reversed(checkpoint_dirs(out_dir)):
        try:
            state = torch.load(ckpt / STATE, weights_only=False)
            return ckpt, state
        except Exception as e:  # truncated or corrupted: fall back to the previous one
            log.warning("checkpoint %s is incomplete or corrupted (%s); trying the previous one", ckpt, e)
    return None


def restore_rng(state: dict) -> None:
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
