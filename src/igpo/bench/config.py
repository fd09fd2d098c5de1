"""The learning benchmark's settings (`bench:` section), each arm's training config, and where its files live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from igpo.config import Config, ConfigError, apply_overrides, check_estimator_options, read_yaml, validate

SMALL = {"bench.estimators": ["igpo", "grpo"], "bench.seeds": [0]}


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    estimators: list[str] = ["igpo", "grpo", "igpo_ig_only", "igpo_outcome_only", "gated"]
    seeds: list[int] = [0, 1, 2]
    eval_every: int = Field(5, ge=1)  # dev evaluation every k steps
    # A checkpoint every k steps (and at the end). Resume is exact, so k changes no result, only how many steps a
    # stopped run trains again (k - 1 at most). Each holds the weights and AdamW's state (~1.6 GB for SmolLM2-135M);
    # `trainer.keep_last` of them are kept.
    save_every: int = Field(1, ge=1)
    dev_size: int = Field(100, ge=1)  # first questions of data.eval
    test: str | None = None  # test QA file, evaluated at the end of every run
    test_size: int = Field(200, ge=1)
    out_dir: str = "runs/bench-learning"
    sft: bool = True  # warm-start once with the `sft` section; False: start every run from model.path
    # Runs trained at once, each in its own process with cpu_count // jobs torch threads. A 135M model does not
    # keep two CPU threads busy: on 2 cores, 2 jobs of 1 thread train more steps an hour than 1 job of 2
    # (measured in benchmarks/README.md). Each job holds its own models and optimizer (~10 GB resident here).
    jobs: int = Field(1, ge=1)
    # results.json files of earlier invocations (another machine, an out_dir since lost): their finished runs in
    # this grid count as done and are aggregated with this out_dir's. Each must record the same starting model,
    # training config and evaluation settings (`results.incompatible`); a run finished here wins over an included
    # one.
    include: list[str] = []
    # Also merge `include` files whose starting model has other weights but scored the same dev and test n/F1/EM
    # here: an SFT rebuilt from the same recipe under another torch build or CPU vector unit rounds differently
    # (benchmarks/README.md). Off by default, since such runs share a start only up to rounding; merged runs then
    # record their start's sha256 (`start_sha256`) and results.json lists the starts (`start.equivalent`).
    include_equivalent_starts: bool = False
    # Named variants, runnable like estimators in `estimators`: dotted `algorithm.*` overrides of the shared config
    # (e.g. igpo_raw_ig: {algorithm.norm: raw_ig, algorithm.ig: log_prob_diff}). Only the algorithm may differ
    # between runs; everything else (budget, evaluation) is shared.
    variants: dict[str, dict[str, Any]] = {}


def load_bench_config(
    path: str | Path, overrides: list[str] | None = None, small: bool = False
) -> tuple[BenchConfig, Config]:
    """The file's `bench:` section, and the rest of it as the training `Config` shared by every run.

    Overrides starting with `bench.` go to the former. `small: True` first applies the file's `small:` section
    (dotted keys, e.g. `bench.seeds: [0]`, `trainer.steps: 10`; default: igpo and grpo, one seed), then
    `overrides`, which win."""
    from igpo.algo.advantages import ESTIMATORS

    tree = read_yaml(path)
    preset = tree.pop("small", None)
    if preset is not None and not isinstance(preset, dict):
        raise ConfigError(f"small: expected a mapping of dotted keys to values, got {type(preset).__name__}")
    over = [f"{k}={json.dumps(v)}" for k, v in (preset or SMALL).items()] if small else []
    over += overrides or []
    bench_tree = tree.pop("bench", None) or {}
    apply_overrides(bench_tree, [o[len("bench.") :] for o in over if o.startswith("bench.")])
    bench = validate(BenchConfig, bench_tree, prefix="bench.")
    cfg = validate(Config, apply_overrides(tree, [o for o in over if not o.startswith("bench.")]))
    if clash := sorted(set(bench.variants) & set(ESTIMATORS)):
        raise ConfigError(f"bench.variants: {clash} name estimators; give variants names of their own")
    if unknown := [e for e in bench.estimators if e not in ESTIMATORS and e not in bench.variants]:
        raise ConfigError(
            f"bench.estimators: unknown estimator(s) or variant(s) {unknown}; "
            f"known: {sorted(ESTIMATORS)} and bench.variants {sorted(bench.variants)}"
        )
    check_estimator_options(cfg, [e for e in bench.estimators if e in ESTIMATORS])
    for name in bench.estimators:
        if name in bench.variants:
            variant = arm_config(bench, cfg, name)
            check_estimator_options(variant, [variant.algorithm.estimator])
    return bench, cfg


def arm_config(bench: BenchConfig, base: Config, arm: str) -> Config:
    """The training config of one arm of the benchmark: `base` with `algorithm.estimator` = arm, or with the
    overrides of the variant `arm` (validated; an error names `bench.variants.<arm>`)."""
    if arm not in bench.variants:
        cfg = base.model_copy(deep=True)
        cfg.algorithm.estimator = arm
        return cfg
    overrides = bench.variants[arm]
    if bad := sorted(k for k in overrides if not k.startswith("algorithm.")):
        raise ConfigError(f"bench.variants.{arm}: only algorithm.* keys may differ between runs (got {bad})")
    # Only the keys written in the base file and the variant count as set (the options check reads that).
    tree = base.model_dump(mode="json", exclude_unset=True)
    try:
        return validate(Config, apply_overrides(tree, [f"{k}={json.dumps(v)}" for k, v in overrides.items()]))
    except ConfigError as e:
        raise ConfigError(f"bench.variants.{arm}: {e}") from None


# ---------------------------------------------------------------------- files in bench.out_dir
def run_dir(bench: BenchConfig, estimator: str, seed: int) -> Path:
    return Path(bench.out_dir) / f"{estimator}-s{seed}"


def is_done(bench: BenchConfig, estimator: str, seed: int) -> bool:
    return (run_dir(bench, estimator, seed) / "done.json").is_file()


def start_model_dir(bench: BenchConfig, cfg: Config) -> str:
    """The model every run starts from: the shared SFT model, or `model.path`."""
    return str(Path(bench.out_dir) / "sft" / "model") if bench.sft else cfg.model.path


def start_files(bench: BenchConfig) -> list[Path]:
    """Where the starting model's dev (and, with `bench.test`, test) evaluation is cached."""
    out = Path(bench.out_dir)
    return [out / "step0_dev.json"] + ([out / "step0_test.json"] if bench.test else [])
