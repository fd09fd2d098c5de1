"""Checkpoints and the run folder's state for exact resume.

A checkpoint is a folder `checkpoints/step_NNNNNN/`: the model (`save_pretrained`: full weights or the LoRA
adapter), the tokenizer, `trainer_state.pt` (step, optimizer, scheduler, every RNG state, data position,
skipped-step count, retrieval cache pointer, wandb run id) and, written last, `manifest.json` listing every file
with its size and SHA-256. It is written in `step_NNNNNN.tmp/` and renamed into place, so a run killed while saving
leaves a `.tmp` folder (removed by the next save), never a half-written checkpoint under the final name. A
checkpoint whose manifest is missing or does not match its files (truncated, corrupted) is moved aside to
`step_NNNNNN.corrupt` with a warning, and the previous one is used. The last `trainer.keep_last` checkpoints are
kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from igpo.files import atomic_write_text
from igpo.retrieval.base import Retriever
from igpo.train.faults import kill_point

log = logging.getLogger(__name__)
STATE = "trainer_state.pt"
MANIFEST = "manifest.json"
_NAME = re.compile(r"step_(\d+)")


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """Checkpoint folders under the final name, oldest first (`.tmp` and `.corrupt` folders are not)."""
    root = Path(out_dir) / "checkpoints"
    found = [p for p in root.glob("step_*") if p.is_dir() and _NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)))


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, step: int) -> None:
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(folder)}
    atomic_write_text(folder / MANIFEST, json.dumps({"step": step, "files": files}, indent=1))


def verify(folder: Path) -> str | None:
    """None when every file the manifest lists is there with its size and hash; else what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (the save did not finish)"
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable {MANIFEST} ({e})"
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {want['size']}"
        if _sha256(path) != want["sha256"]:
            return f"{name} does not match its SHA-256"
    return None


def save_checkpoint(
    out_dir: Path,
    step: int,
    model,
    tokenizer,
    optimizer,
    scheduler,
    keep_last: int,
    extra: dict | None = None,
    *,
    model_state: dict | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Write `step_NNNNNN/` atomically (see the module doc); `extra` goes into the trainer state.
    `model_state` / `optimizer_state` replace the live objects' state dicts (a sharded model's, gathered)."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"step_{step:06d}"
    for stale in root.glob("step_*.tmp"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f"step_{step:06d}.tmp"
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, **({} if model_state is None else {"state_dict": model_state}))
    tokenizer.save_pretrained(tmp)
    kill_point("save.model")
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    if optimizer_state is None:
        optimizer_state = optimizer.state_dict()
    state = {"step": step, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": rng}
    torch.save({**state, **(extra or {})}, tmp / STATE)
    kill_point("save.state")
    write_manifest(tmp, step)
    kill_point("save.manifest")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    kill_point("save.prune")
    for old in checkpoint_dirs(out_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: Path) -> tuple[Path, dict] | None:
    """The newest complete checkpoint and its trainer state, or None.

    A checkpoint that fails `verify` is renamed to `*.corrupt` (kept for inspection, never pruned in place of a
    good one) with a warning, and the previous one is tried."""
    for ckpt in reversed(checkpoint_dirs(out_dir)):
        problem = verify(ckpt)
        if problem is None:
            try:
                return ckpt, torch.load(ckpt / STATE, weights_only=False)
            except Exception as e:  # noqa: BLE001 - a state the manifest vouches for but torch cannot read
                problem = f"unreadable {STATE} ({type(e).__name__}: {e})"
        aside = ckpt.with_name(ckpt.name + ".corrupt")
        shutil.rmtree(aside, ignore_errors=True)
        ckpt.rename(aside)
        log.warning(
            "checkpoint %s is incomplete or corrupted: %s; moved to %s, using the previous one",
            ckpt,
            problem,
            aside.name,
        )
    return None


def restore_rng(state: dict) -> None:
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def truncate_rows(path: Path, step: int) -> None:
    """Keep the JSONL rows of steps before `step` (a resumed run writes the later ones again).

    A row that is not JSON (a line cut by a kill or a full disk) is dropped with a warning. Rewritten atomically:
    a kill here loses nothing."""
    if not path.exists():
        return
    keep, broken = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            broken += 1
            continue
        if row_step < step:
            keep.append(line)
    if broken:
        log.warning("%s: dropped %d unreadable rows", path, broken)
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def retrieval_pointer(retriever: Retriever | None) -> dict | None:
    """What the retriever needs to resume with its on-disk cache (`HTTPRetriever.cache_pointer`), if it has one."""
    return retriever.cache_pointer() if retriever is not None else None


def check_resume_state(state: dict, questions_per_step: int, retriever: Retriever | None) -> None:
    """Warn where the resumed run cannot continue exactly as the interrupted one would have."""
    data = state.get("data")
    if data and data.get("questions_per_step") != questions_per_step:
        log.warning(
            "rollout.questions_per_step was %s and is now %d: from step %d on, the questions differ from "
            "those of the interrupted run",
            data.get("questions_per_step"),
            questions_per_step,
            state["step"],
        )
    saved, now = state.get("retrieval"), retrieval_pointer(retriever)
    if saved and saved.get("cache_dir") and now is not None:
        for key in ("cache_dir", "index_id"):
            if now.get(key) and now[key] != saved[key]:
                log.warning(
                    "the retrieval %s was %s and is now %s: searches made before the interruption will "
                    "not replay from the cache",
                    key,
                    saved[key],
                    now[key],
                )
