"""The learning benchmark's results.json: per run, its dev curve, test scores and where its update weight went;
per estimator, the summary and the paired difference to grpo; the runs of earlier results.json files
(`bench.include`) merged in where they are comparable."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from igpo.bench.config import BenchConfig, is_done, run_dir, start_files, start_model_dir
from igpo.config import RENAMED, Config, ConfigError, config_fields, result_keys


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _curve(run: Path, step0: dict | None) -> dict:
    evals = {row["step"]: row["overall"] for row in _read_jsonl(run / "eval.jsonl")}  # last row per step wins
    if step0 is not None:
        evals.setdefault(0, step0)
    metrics = [m for m in _read_jsonl(run / "metrics.jsonl") if "skipped" not in m]  # skipped steps trained nothing
    tokens = np.cumsum([m["generated_tokens"] for m in metrics]).tolist()
    steps = sorted(evals)
    return {
        "steps": steps,
        "dev_f1": [evals[s]["f1"] for s in steps],
        "dev_em": [evals[s]["em"] for s in steps],
        "generated_tokens_at_step": [0 if s == 0 else tokens[min(s, len(tokens)) - 1] for s in steps],
        "zero_variance_groups": [m["zero_variance_groups"] for m in metrics],
        "turns": [m["turns"] for m in metrics],
        "train_f1": [m["f1"] for m in metrics],
        "generated_tokens": int(tokens[-1]) if tokens else 0,
        "tokens": int(sum(m["tokens"] for m in metrics)),
        "seconds": float(sum(sum(m["seconds"].values()) for m in metrics)),
        "seconds_by_phase": [m["seconds"] for m in metrics],  # per trained step: {phase: seconds}
    }


def advantage_signal(samples: list[dict]) -> dict | None:
    """Where a run's update weight went, from its logged whole groups (`samples.jsonl`): token-weighted |advantage|
    (a turn's advantage applies to each token the policy generated in it), split by whether the group's outcomes
    were all equal, how often a turn's advantage has the sign of its outcome's deviation from the group mean
    (the sign GRPO would give it, whatever `std`), and the median |IG| of a tool turn in either kind of group (None
    for estimators that score no beliefs). None when no whole group was logged."""
    groups: dict[tuple, list[dict]] = {}
    for r in samples:
        groups.setdefault((r["step"], r["group"]), []).append(r)
    total = zero_var = same = counted = 0.0
    n_groups = n_zero = n_zero_failed = 0
    ig: dict[bool, list[float]] = {True: [], False: []}
    for eps in groups.values():
        if len(eps) < 2:  # a partial group has no within-group deviation to speak of
            continue
        n_groups += 1
        outcomes = np.array([e["outcome"] for e in eps])
        flat = bool(np.allclose(outcomes, outcomes[0]))
        n_zero += flat
        n_zero_failed += int(flat and outcomes[0] <= 0)
        for e, dev in zip(eps, outcomes - outcomes.mean()):
            for t in e["turns"]:
                if t.get("ig") is not None:
                    ig[flat].append(abs(t["ig"]))
                w = abs(t["advantage"]) * t["generated_tokens"]
                total += w
                zero_var += w * flat
                if abs(dev) > 1e-9:
                    counted += t["generated_tokens"]
                    same += t["generated_tokens"] * float(np.sign(t["advantage"]) == np.sign(dev))
    if not n_groups:
        return None
    return {
        "groups": n_groups,
        "zero_variance_groups": n_zero / n_groups,
        "zero_variance_all_failed": n_zero_failed / n_zero if n_zero else None,
        "abs_adv_tokens": total,
        "zero_variance_share_of_abs_adv": zero_var / total if total else 0.0,
        "outcome_sign_agreement": same / counted if counted else None,
        "median_abs_ig": {
            kind: float(np.median(ig[flat])) if ig[flat] else None
            for kind, flat in (("zero_variance_groups", True), ("other_groups", False))
        },
    }


def _steps_to_reach(curve: dict, target: float) -> int | None:
    """The first evaluated step with dev F1 ≥ target; 0 when the starting model already is (then the figure
    says nothing about sample efficiency); None if never."""
    return next((s for s, f in zip(curve["steps"], curve["dev_f1"]) if f >= target), None)


def _turns_trend(per_seed: list[list[float] | None], k: int = 5) -> dict:
    curves = [c for c in per_seed if c]
    if not curves:
        return {"turns_first_steps": None, "turns_last_steps": None}
    return {
        "turns_first_steps": float(np.mean([np.mean(c[:k]) for c in curves])),
        "turns_last_steps": float(np.mean([np.mean(c[-k:]) for c in curves])),
    }


def paired_vs_grpo(runs: dict[str, dict[str, dict]], est: str) -> dict | None:
    """`est`'s final test F1 and final dev F1 minus grpo's, seed by seed: a seed fixes the questions of every
    step and the sampling stream, so the two runs of a seed differ only by the estimator, and the paired
    difference has less spread than the two estimators' means over seeds. `runs`: {estimator: {seed: record}}
    as in results.json. Returns {"seeds": [...], "test_f1": {"per_seed", "mean", "std"}, "final_dev_f1": {...}}
    (std: sample std, None for one seed), or None for grpo itself or when no seed has both runs with a test."""
    if est == "grpo":
        return None
    mine, base = runs.get(est, {}), runs.get("grpo", {})
    seeds = sorted((s for s in mine if s in base and mine[s]["test"] and base[s]["test"]), key=int)
    if not seeds:
        return None

    def diff(value: Callable[[dict], float]) -> dict:
        d = [value(mine[s]) - value(base[s]) for s in seeds]
        return {"per_seed": d, "mean": float(np.mean(d)), "std": float(np.std(d, ddof=1)) if len(d) > 1 else None}

    return {
        "seeds": [int(s) for s in seeds],
        "test_f1": diff(lambda r: r["test"]["overall"]["f1"]),
        "final_dev_f1": diff(lambda r: r["dev_f1"][-1]),
    }


# ---------------------------------------------------------------------- results.json
def aggregate(bench: BenchConfig, cfg: Config, step0_dev: dict | None, step0_test: dict | None = None) -> dict:
    """results.json: the starting model's dev and test scores (and weights' sha256), the shared training config;
    per estimator and seed, curves and final test scores (a run finished here, else one of a `bench.include`
    file); per estimator, the summary."""
    start = start_record(bench, cfg, step0_dev, step0_test)
    reg = regime(cfg)
    included = included_runs(bench, start, reg)
    runs: dict[str, dict[str, dict]] = {}
    for est in bench.estimators:
        for seed in bench.seeds:
            if is_done(bench, est, seed):
                rec = _run_record(run_dir(bench, est, seed), step0_dev)
            else:
                rec = included.get(est, {}).get(str(seed))
            if rec is not None:
                runs.setdefault(est, {})[str(seed)] = rec
    starts = {r.get("start_sha256") for seeds in runs.values() for r in seeds.values()}
    if others := starts - {None, start["model_sha256"]}:  # merged under bench.include_equivalent_starts
        start["equivalent"] = sorted(others)
    grpo_final = float(np.mean([r["dev_f1"][-1] for r in runs["grpo"].values()])) if "grpo" in runs else None
    summary = {est: _summary(runs, est, grpo_final) for est in runs}
    pending = [
        run_dir(bench, e, s).name for s in bench.seeds for e in bench.estimators if str(s) not in runs.get(e, {})
    ]
    result = {
        "bench": bench.model_dump(),
        "start": start,
        "config": reg,
        "grpo_final_dev_f1": grpo_final,
        "summary": summary,
        "runs": runs,
        "pending": pending,
    }
    (Path(bench.out_dir) / "results.json").write_text(json.dumps(result, indent=1))
    return result


def _run_record(run: Path, step0_dev: dict | None) -> dict:
    """A finished run's record: its curves, final test scores, test tool calls and advantage signal."""
    rec = _curve(run, step0_dev)
    done = json.loads((run / "done.json").read_text())
    rec["test"] = done["test"]
    rec["machine"] = done.get("machine")  # done.json files written before it was recorded have none
    rec["test_tool_calls"] = mean_tool_calls([rec["test"]])  # of one run: its own
    rec["advantage_signal"] = advantage_signal(_read_jsonl(run / "samples.jsonl"))
    return rec


def _summary(runs: dict[str, dict[str, dict]], est: str, grpo_final: float | None) -> dict:
    """One estimator's row of the summary, over its seeds."""
    seeds = runs[est]
    test_f1 = [r["test"]["overall"]["f1"] for r in seeds.values() if r["test"]]
    zv = [np.mean(r["zero_variance_groups"]) for r in seeds.values() if r["zero_variance_groups"]]
    sig = [r["advantage_signal"] for r in seeds.values() if r["advantage_signal"]]
    agree = [x["outcome_sign_agreement"] for x in sig if x["outcome_sign_agreement"] is not None]
    return {
        "seeds": len(seeds),
        "test_f1_mean": float(np.mean(test_f1)) if test_f1 else None,
        # sample std over seeds (ddof 1); none for a single seed rather than a misleading 0
        "test_f1_std": float(np.std(test_f1, ddof=1)) if len(test_f1) > 1 else None,
        # tool calls per question by source on test, mean over seeds (start["tool_calls"]["test"]: before)
        "test_tool_calls_mean": mean_tool_calls([r["test"] for r in seeds.values()]),
        "final_dev_f1_mean": float(np.mean([r["dev_f1"][-1] for r in seeds.values()])),
        "zero_variance_share": float(np.mean(zv)) if zv else None,
        # of the update weight (token-weighted |advantage|), the part from groups whose outcomes were all equal
        "zero_variance_share_of_abs_adv": (
            float(np.mean([x["zero_variance_share_of_abs_adv"] for x in sig])) if sig else None
        ),
        "outcome_sign_agreement": float(np.mean(agree)) if agree else None,
        "steps_to_grpo_final_dev_f1": (
            [_steps_to_reach(r, grpo_final) for r in seeds.values()] if grpo_final is not None else None
        ),
        "vs_grpo": paired_vs_grpo(runs, est),
        # turns per episode in the first and the last 5 training steps (mean over steps and seeds): does
        # training shorten the episodes (the joint pool's charge on every extra turn)?
        **_turns_trend([r.get("turns") for r in seeds.values()]),
    }


def start_record(bench: BenchConfig, cfg: Config, step0_dev: dict | None, step0_test: dict | None) -> dict:
    """The starting model's scores, its tool calls per question by source on dev and test, weights' sha256 and,
    for the shared SFT, what built it (`sft.json`)."""
    from igpo.eval.evaluate import tool_calls_by_source

    sft_json = Path(start_model_dir(bench, cfg)).parent / "sft.json"
    built_on = json.loads(sft_json.read_text()).get("built_on") if bench.sft and sft_json.is_file() else None

    def calls(path: Path | None) -> dict[str, float] | None:
        return tool_calls_by_source(json.loads(path.read_text())) if path is not None and path.is_file() else None

    dev_file, *test_file = start_files(bench)
    tool_calls = {"dev": calls(dev_file), "test": calls(test_file[0] if test_file else None)}
    return {
        "dev": step0_dev,
        "test": step0_test,
        "tool_calls": tool_calls,
        "model_sha256": model_sha256(start_model_dir(bench, cfg)),
        "built_on": built_on,
    }


def mean_tool_calls(tests: list[dict]) -> dict[str, float] | None:
    """Tool calls per question by source (and overall), averaged over runs' test results; a source counts the
    runs that evaluated it. None without any test."""
    from igpo.eval.evaluate import tool_calls_by_source

    per_run = [tool_calls_by_source(t) for t in tests if t]
    if not per_run:
        return None
    keys = sorted({k for r in per_run for k in r if k != "overall"}) + ["overall"]
    return {k: float(np.mean([r[k] for r in per_run if k in r])) for k in keys}


def model_sha256(model_dir: str) -> str | None:
    """sha256 over a saved model's weight files (sorted by name); None when it is not a local folder of them."""
    import hashlib

    files = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------- merging bench.include
# Settings each run sets itself (`run_one`; the bench settings behind them are compared as `_BENCH_REGIME`): they
# may differ between merged results, as may those the config flags as not changing what a run computes
# (`igpo.config.result_keys`).
RUN_SET = frozenset(
    {
        "algorithm.estimator",
        "trainer.seed",
        "trainer.eval_every",
        "trainer.save_every",
        "trainer.eval_size",
        "model.lora.enabled",
        "model.path",
        "trainer.out_dir",
    }
)
_BENCH_REGIME = ("eval_every", "dev_size", "test", "test_size", "sft")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def regime(cfg: Config) -> dict:
    """The training config every run shares, as dotted keys: those that can change what a run computes
    (`result_keys`) less those each run sets itself (`RUN_SET`). What results.json records so that results from
    another invocation can be checked before they are merged."""
    keys = set(result_keys()) - RUN_SET
    return {k: v for k, v in _flat(cfg.model_dump(mode="json")).items() if k in keys}


def included_runs(bench: BenchConfig, start: dict, reg: dict) -> dict[str, dict[str, dict]]:
    """The finished runs of `bench.include` that lie in this grid, {estimator: {seed: record}}, each record
    with `"from"`: the file it came from (the first file to have a run wins). Raises ConfigError naming the
    file if one is missing, not a results.json, or not comparable (`incompatible`). `start`: this out_dir's
    `start_record`; `reg`: `regime(cfg)`."""
    runs: dict[str, dict[str, dict]] = {}
    for path in bench.include:
        try:
            other = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"bench.include: {path}: cannot read it as a results.json ({e})") from None
        if not isinstance(other, dict) or not isinstance(other.get("runs"), dict):
            raise ConfigError(f"bench.include: {path}: not a results.json of `igpo bench learning` (no `runs`)")
        if why := incompatible(other, bench, start, reg):
            raise ConfigError(f"bench.include: {path}: {why}; its runs are not comparable with these")
        theirs = other.get("start", {}).get("model_sha256")
        for est, seeds in other["runs"].items():
            for seed, rec in seeds.items():
                if est in bench.estimators and int(seed) in bench.seeds:
                    rec = {**rec, "from": rec.get("from", str(path))}
                    if theirs and theirs != start.get("model_sha256"):
                        rec.setdefault("start_sha256", theirs)
                    runs.setdefault(est, {}).setdefault(seed, rec)
    return runs


def incompatible(other: dict, bench: BenchConfig, start: dict, reg: dict) -> str | None:
    """Why the runs of an earlier results.json (`other`) cannot be merged with these, or None: the first
    difference in the starting model, the evaluation settings, the variants, then the training config. What
    `other` does not record (older files have no config or model hash) is not checked."""
    return (
        _other_start(other.get("start", {}), start, bench.include_equivalent_starts)
        or _other_bench(other.get("bench", {}), bench)
        or _other_config(other.get("config"), reg)
    )


def _scores(split: dict) -> tuple:
    return tuple(split.get(k) for k in ("n", "f1", "em"))


def _same_start_scores(a: dict, b: dict) -> bool:
    """Whether two starts scored the same greedy dev and test n/F1/EM (both must have been evaluated)."""
    return all(a.get(s) and b.get(s) and _scores(a[s]) == _scores(b[s]) for s in ("dev", "test"))


def _built(on: dict) -> str:
    return f"torch {on.get('torch')} on CPU capability {on.get('cpu_capability')}"


def _other_start(there: dict, here: dict, equivalent_ok: bool) -> str | None:
    """Why the start recorded there is not this one: other weights (unless they scored the same and
    `equivalent_ok`); where either side records no weights' hash, other dev scores."""
    mine, theirs = here.get("model_sha256"), there.get("model_sha256")
    if mine and theirs:
        same_scores = _same_start_scores(there, here)
        if mine == theirs or (same_scores and equivalent_ok):
            return None
        built_there, built_here = there.get("built_on"), here.get("built_on")
        if built_there and built_here and _built(built_there) != _built(built_here):
            why = f"built with {_built(built_there)} there, {_built(built_here)} here"
        else:
            why = "an SFT from the same recipe rounds differently under another torch build or CPU vector unit"
        hint = (
            (
                "; it scored the same dev and test n/F1/EM as the model here, so "
                "bench.include_equivalent_starts=true would merge them"
            )
            if same_scores
            else ""
        )
        return f"they started from another model (weights sha256 {theirs[:12]}, here {mine[:12]}; {why}){hint}"
    dev, their_dev = here.get("dev"), there.get("dev")
    if dev and their_dev and _scores(their_dev) != _scores(dev):
        return (
            f"its starting model scored dev n/F1/EM {_scores(their_dev)} against {_scores(dev)} here, so it is "
            "not the same model (or not the same dev questions)"
        )
    return None


def _other_bench(there: dict, bench: BenchConfig) -> str | None:
    """Why the evaluation settings, or a variant both files name, differ there."""
    for key in _BENCH_REGIME:
        if key in there and there[key] != getattr(bench, key):
            return f"bench.{key} is {there[key]!r} there, {getattr(bench, key)!r} here"
    their_variants = there.get("variants", {})
    for name in sorted(set(their_variants) & set(bench.variants)):
        if their_variants[name] != bench.variants[name]:
            return f"bench.variants.{name} is {their_variants[name]!r} there, {bench.variants[name]!r} here"
    return None


def _other_config(there: dict | None, reg: dict) -> str | None:
    """The first training-config key whose value differs there (`reg`: `regime(cfg)` here)."""
    if there is None:
        return None
    there = {RENAMED.get(k, k): v for k, v in there.items()}  # recorded before a rename
    # A key the other file does not record was added since: at its default it computes what it did before. A
    # key it records that the config no longer has is compared (what it did is unknown).
    default, known = regime(Config()), {k for k, _ in config_fields()}
    for key in sorted(set(reg) | set(there)):
        value = there[key] if key in there else default.get(key)
        if (key in default or key not in known) and reg.get(key) != value:
            return f"{key} is {value!r} there, {reg.get(key)!r} here"
    return None
