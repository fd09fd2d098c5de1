"""One training step with each rollout backend (`rollout.backend`: hf, vllm), seconds by phase.

Each backend gets its own trainer, built as `step.py` builds its one (the demo's regime, IGPO's estimator, the
config's SFT warm start or `--model`) from the same config, seed and model, and differing only in
`rollout.backend`. Its generator (for `vllm`, the engine: its start, importing vLLM included) is built and timed
before the steps. Then the trainers take real steps (`Trainer.train_step`: the weight push to a vLLM engine, the
rollout, then `learn`: beliefs, reference log-probs, the update), side by side: step k of each samples the same
questions with the same seeds, from its own weights (the backends sample different tokens, so their updates
differ). `--warmup` steps of each are
not counted; then `--repeats` steps each, interleaved (hf vllm, vllm hf, ...). Per backend: the generator's start,
seconds by phase (`weight_push`, `rollout`, `beliefs`, `old_logprobs`, `ref_logprobs`, `update`, and `other`: the
rest of the step) and of the whole step (median and spread over the repeats), the tokens generated and the rollout's
tokens/s; the ratios of each backend's medians to the first's (`hf`), and of its step seconds per repeat. The JSON
records the machine (`igpo.machine`), the load average before each step and the engine's settings.

    VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind .venv-vllm/bin/python benchmarks/step_backend.py \\
        --set rollout.vllm.dtype=float32 --set rollout.vllm.enforce_eager=true

`--set-vllm KEY=VALUE` overrides the vllm backend's config only (e.g. `algorithm.belief_backend=engine`: its
beliefs scored in the engine; each backend's `belief_backend` and `belief_impl` are recorded).

`--small`: `step.py`'s small step (2 questions x 2 rollouts of at most 2 turns of 16 tokens) on the model given
(`--model`; default SmolLM2): a check that the script runs, not a measurement.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import add_threads_option, apply_threads, load_average, machine_record, summarize, vllm_settings
from igpo.agent.build import make_generator
from igpo.config import Config
from igpo.train.trainer import Trainer
from step import SMALL, add_trainer_options, regime, trainer_inputs

BACKENDS = ("hf", "vllm")


def build(args: argparse.Namespace, backend: str, out_dir: Path) -> tuple[Trainer, float]:
    """The trainer of `backend` (`trainer_inputs` with `rollout.backend` set) and the seconds its generator took to
    build (a vLLM engine's start). The trainer does not own the generator: `close` it when done."""
    inputs = argparse.Namespace(**{**vars(args), "small": False})  # the model as given: no tiny random swap
    only = args.set_vllm if backend == "vllm" else []
    inputs.set = [*(SMALL if args.small else []), *args.set, *only, f"rollout.backend={backend}"]
    cfg, model, tok = trainer_inputs(inputs, out_dir)
    args.model = inputs.model  # the warm start's path, when it was the default
    t = time.perf_counter()
    generator = make_generator(cfg, model, tok.pad_token_id)
    start_s = time.perf_counter() - t
    return Trainer(cfg, model=model, tokenizer=tok, generator=generator), start_s


def one_step(trainer: Trainer) -> dict:
    """`train_step`: its seconds in all and by phase, what it generated, the load average before it."""
    gc.collect()
    load = load_average()
    t = time.perf_counter()
    row = trainer.train_step()
    total = time.perf_counter() - t
    phases = dict(row["seconds"])
    phases["other"] = total - sum(phases.values())  # rewards, advantages, collation, metrics
    return {
        "step": row["step"],
        "total": total,
        "phases": phases,
        "generated_tokens": row["generated_tokens"],
        "tokens": row["tokens"],
        "rollout_tokens_per_s": row["tokens_per_s"]["rollout"],
        "rollout_lp_abs_diff": row.get("rollout_lp_abs_diff"),  # the vLLM backend's log-probs vs the trainer's
        "load_avg": load,
    }


def measure(trainers: dict[str, Trainer], warmup: int, repeats: int) -> tuple[dict[str, list[dict]], list[str]]:
    """`warmup` + `repeats` steps of each trainer, interleaved, the first to go rotating; the counted steps of each
    and the order they ran in."""
    names = list(trainers)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    order = []
    for r in range(warmup + repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = one_step(trainers[name])
            print(f"{'warm-up' if r < warmup else 'repeat'} {r} {name}: {run['total']:.2f} s", flush=True)
            if r >= warmup:
                runs[name].append(run)
                order.append(name)
    return runs, order


def backend_summary(runs: list[dict], base: list[dict], start_s: float, cfg: Config) -> dict:
    """One backend's figures over its counted steps `runs`, with ratios to the baseline backend's `base`."""
    phases = sorted({p for x in runs for p in x["phases"]})
    phase_s = {p: summarize([x["phases"].get(p, 0.0) for x in runs]) for p in phases}
    base_phase = {p: statistics.median([x["phases"].get(p, 0.0) for x in base]) for p in phases}
    step_s = summarize([x["total"] for x in runs])
    out = {
        "generator_start_s": start_s,
        "step_s": step_s,
        "phase_s": phase_s,
        "generated_tokens": [x["generated_tokens"] for x in runs],
        "rollout_tokens_per_s": summarize([x["rollout_tokens_per_s"] for x in runs]),
        "step_ratio_to_baseline": step_s["median"] / statistics.median([x["total"] for x in base]),
        "step_ratio_to_baseline_per_repeat": [x["total"] / b["total"] for x, b in zip(runs, base)],
        "phase_ratio_to_baseline": {
            p: phase_s[p]["median"] / base_phase[p] if base_phase[p] > 0 else None for p in phases
        },
        "runs": runs,
        # where the beliefs came from: `--set-vllm algorithm.belief_backend=engine` scores them in the engine
        "belief_backend": cfg.algorithm.belief_backend,
        "belief_impl": cfg.algorithm.belief_impl,
    }
    out["step_ratio_to_baseline_median_of_repeats"] = statistics.median(out["step_ratio_to_baseline_per_repeat"])
    if cfg.rollout.backend == "vllm":
        out["engine"] = vllm_settings(cfg)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_trainer_options(ap)
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated; the first is the baseline")
    ap.add_argument(
        "--set-vllm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override of the vllm backend's trainer only, e.g. algorithm.belief_backend=engine (repeatable)",
    )
    ap.add_argument("--warmup", type=int, default=1, help="steps of each backend before the counted ones")
    ap.add_argument("--repeats", type=int, default=3, help="counted steps of each backend, interleaved")
    ap.add_argument("--small", action="store_true", help="a small step on the model given: a quick check")
    add_threads_option(ap)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/step_backend.json"))
    args = ap.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or len(set(backends)) != len(backends) or not set(backends) <= set(BACKENDS):
        ap.error(f"--backends {args.backends}: name each of {', '.join(BACKENDS)} at most once")
    if args.small and args.model is None:
        args.model = "smollm2"
    apply_threads(args)  # before any engine starts: vLLM's CPU worker keeps torch's thread count from then on
    trainers: dict[str, Trainer] = {}
    starts: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for b in backends:
                trainers[b], starts[b] = build(args, b, Path(tmp) / b)
            runs, order = measure(trainers, args.warmup, args.repeats)
        finally:
            for trainer in trainers.values():
                trainer.generator.close()
    base = backends[0]
    cfg = trainers[base].cfg
    result = {
        "model": args.model,
        "device": cfg.model.device,
        "machine": machine_record(),
        "regime": regime(cfg),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "baseline": base,
        "order": order,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "backends": {b: backend_summary(runs[b], runs[base], starts[b], trainers[b].cfg) for b in backends},
    }
    summary = {
        b: {k: r[k] for k in ("generator_start_s", "step_ratio_to_baseline")} | {"step_s": r["step_s"]["median"]}
        for b, r in result["backends"].items()
    }
    print(json.dumps(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
