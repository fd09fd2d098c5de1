"""One real IGPO step in the demo's regime, with each optimisation of the step off and on, on the same trajectories.

The step's questions are rolled out once (timed). Then, for each configuration, the rest of the step
(`Trainer.learn`: beliefs, reference log-probs, the update's forward, backward and optimizer step) runs on a copy
of those trajectories, from the same weights, optimizer state and step (restored before every run). The
configurations turn on the optimisations one at a time and together:

- baseline: `trainer.shared_prefix: false`, `algorithm.belief_impl: packed` (the plain path);
- shared_prefix: `trainer.shared_prefix: true` (the prefix common to a micro-batch's rows computed once);
- cached_beliefs: `algorithm.belief_impl: cache` (each turn's probe scored against the rollout's KV cache);
- both.

An optimisation that is off where the installed Config has no key for it is the plain path, so its key is left
out; a configuration that turns on one the Config does not accept (no such key, or not that value) is reported
as unavailable, with the config error that names the key. The configurations are interleaved (A B C D A B C D
...) `--repeats` times. Per configuration: seconds by phase and of the whole of `learn` (median and spread over
the repeats), the whole step (rollout + `learn`), the ratios of its medians to the baseline's, and `exact`: every
repeat's loss terms (pg_loss, kl, entropy, grad_norm) within 1e-5 of the baseline's first repeat and its beliefs
within 1e-4, with the largest differences. The JSON records the machine (`igpo.machine`) and the load average at
the rollout and at each run.

    python benchmarks/step.py --out benchmarks/results/step.json

The model is the demo's SFT warm start (`sft.out_dir` of the config, made by `igpo demo` or `igpo sft --config
configs/demo.yaml`), or `--model`. `--small`: a tiny random Llama with that model's tokenizer (SmolLM2's without
`--model`), 2 questions x 2 rollouts of at most 2 turns of 16 tokens (a check that the script runs, not a
measurement).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import add_threads_option, apply_threads, load_average, machine_record, summarize
from igpo.config import Config, ConfigError, apply_overrides, config_fields, load_config, validate
from igpo.train.metrics import SHARED_LOSSES, SUMMED_LOSSES
from igpo.train.trainer import Timer, Trainer

# Each optimisation's config key, with its value when off (the plain path) and when on.
OPTIMISATIONS = {
    "shared_prefix": ("trainer.shared_prefix", False, True),
    "cached_beliefs": ("algorithm.belief_impl", "packed", "cache"),
}
# Which optimisations each configuration turns on; the first is the baseline the others are compared with.
CONFIGURATIONS = {
    "baseline": (),
    "shared_prefix": ("shared_prefix",),
    "cached_beliefs": ("cached_beliefs",),
    "both": ("shared_prefix", "cached_beliefs"),
}
LOSS_KEYS = SUMMED_LOSSES + SHARED_LOSSES
LOSS_TOL = 1e-5
BELIEF_TOL = 1e-4
SMALL = ["rollout.questions_per_step=2", "rollout.group_size=2", "rollout.max_turns=2", "rollout.max_new_tokens=16"]


def configuration_settings(known: set[str]) -> dict[str, dict[str, Any]]:
    """Each configuration's config settings: every optimisation on or off; one that is off and has no key in
    `known` (the Config's dotted keys) is the plain path and is left out."""
    out = {}
    for name, on in CONFIGURATIONS.items():
        settings = {}
        for opt, (key, off_value, on_value) in OPTIMISATIONS.items():
            if opt in on:
                settings[key] = on_value
            elif key in known:
                settings[key] = off_value
        out[name] = settings
    return out


def variant(cfg: Config, settings: dict[str, Any]) -> Config | str:
    """`cfg` with `settings` ({dotted key: value}) applied, or the config error that says why it cannot be."""
    try:
        return validate(
            Config, apply_overrides(cfg.model_dump(mode="json"), [f"{k}={json.dumps(v)}" for k, v in settings.items()])
        )
    except ConfigError as e:
        return str(e)


def snapshot(trainer: Trainer) -> dict:
    """What `Trainer.learn` changes: the weights, the optimizer and scheduler, the step and the IG gate."""
    return {
        "model": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "scheduler": copy.deepcopy(trainer.scheduler.state_dict()),
        "step": trainer.step,
        "ig_gate": copy.deepcopy(trainer.ig_gate.state_dict()),
    }


def restore(trainer: Trainer, snap: dict) -> None:
    trainer.model.load_state_dict(snap["model"])
    # Copies again: the optimizer keeps the tensors it is given and the next step updates them in place.
    trainer.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
    trainer.scheduler.load_state_dict(copy.deepcopy(snap["scheduler"]))
    trainer.step = snap["step"]
    trainer.ig_gate.load_state_dict(copy.deepcopy(snap["ig_gate"]))


def differences(run: dict, ref: dict) -> tuple[float | None, float | None, str | None]:
    """(largest loss-term difference, largest belief difference, what differs in structure or None) of `run`
    against `ref`; a difference is None where the structures differ."""
    if set(run["losses"]) != set(ref["losses"]):
        return None, None, f"loss terms {sorted(run['losses'])} vs {sorted(ref['losses'])}"
    loss = max((abs(run["losses"][k] - ref["losses"][k]) for k in ref["losses"]), default=0.0)
    shapes = [None if b is None else len(b) for b in run["beliefs"]]
    if shapes != [None if b is None else len(b) for b in ref["beliefs"]]:
        return loss, None, "beliefs scored for other rollouts or turns"
    pairs = [(x, y) for b, r in zip(run["beliefs"], ref["beliefs"]) if b is not None for x, y in zip(b, r)]
    return loss, max((abs(x - y) for x, y in pairs), default=0.0), None


def exactness(runs: list[dict], ref: dict) -> dict:
    """`exact` (every run's loss terms within `LOSS_TOL` of `ref`'s and beliefs within `BELIEF_TOL`) and the
    largest differences over `runs`."""
    losses, beliefs, why = [], [], None
    for run in runs:
        loss, belief, mismatch = differences(run, ref)
        why = why or mismatch
        losses.append(math.inf if loss is None else loss)
        beliefs.append(math.inf if belief is None else belief)
    exact = why is None and max(losses) <= LOSS_TOL and max(beliefs) <= BELIEF_TOL
    out = {
        "exact": exact,
        "max_loss_diff": max(losses) if why is None else None,
        "max_belief_diff": max(beliefs) if why is None else None,
    }
    if why is not None:
        out["mismatch"] = why
    return out


def run_once(trainer: Trainer, trajs: list, cfg: Config) -> dict:
    """`Trainer.learn` under `cfg` on a copy of `trajs`: seconds by phase and in all, loss terms, beliefs."""
    trainer.cfg = cfg
    copies = copy.deepcopy(trajs)
    gc.collect()
    load = load_average()
    timer = Timer()
    t = time.perf_counter()
    row = trainer.learn(copies, timer, release=False)  # the caches serve every run
    total = time.perf_counter() - t
    phases = dict(timer.seconds)
    phases["other"] = total - sum(phases.values())  # rewards, advantages, collation, metrics
    return {
        "total": total,
        "phases": phases,
        "load_avg": load,
        "losses": {k: row[k] for k in LOSS_KEYS if k in row},
        # under `algorithm.belief_impl: cache`, the share of scored trajectories whose caches the generator held
        "beliefs_from_cache_share": row.get("beliefs_from_cache_share"),
        "beliefs": [tr.beliefs for tr in copies],
    }


def measure(trainer: Trainer, configurations: dict[str, dict[str, Any]], repeats: int) -> dict:
    """Rolls out the trainer's next step once, then runs `learn` on those trajectories under each configuration
    ({name: {dotted key: value}}; the first is the baseline) `repeats` times, interleaved, each run from the same
    state. The trainer is left as it was, but with its step's rollout done."""
    base = trainer.cfg
    load = load_average()
    timer = Timer()
    trajs = trainer.collect(trainer.step, timer)
    variants = {name: variant(base, s) for name, s in configurations.items()}
    available = {name: v for name, v in variants.items() if isinstance(v, Config)}
    baseline = next(iter(configurations))
    if baseline not in available:
        raise ConfigError(f"the baseline configuration {configurations[baseline]}: {variants[baseline]}")
    start = snapshot(trainer)
    runs: dict[str, list[dict]] = {name: [] for name in available}
    try:
        for r in range(repeats):
            for name, cfg in available.items():
                runs[name].append(run_once(trainer, trajs, cfg))
                restore(trainer, start)
                print(f"repeat {r} {name}: {runs[name][-1]['total']:.2f} s", flush=True)
    finally:
        trainer.cfg = base
        trainer.generator.release()  # the rollout's KV caches, held for the runs (`algorithm.belief_impl: cache`)
    rollout_s = timer.seconds["rollout"]
    med = {name: summarize([x["total"] for x in rs])["median"] for name, rs in runs.items()}
    out = {}
    for name, settings in configurations.items():
        if name not in available:
            out[name] = {"available": False, "settings": settings, "why": variants[name]}
            continue
        rs = runs[name]
        phases = sorted({p for x in rs for p in x["phases"]})
        phase_s = {p: summarize([x["phases"].get(p, 0.0) for x in rs]) for p in phases}
        base_phase = {p: summarize([x["phases"].get(p, 0.0) for x in runs[baseline]])["median"] for p in phases}
        out[name] = {
            "available": True,
            "settings": settings,
            **exactness(rs if name != baseline else rs[1:] or rs, runs[baseline][0]),
            "learn_s": summarize([x["total"] for x in rs]),
            "phase_s": phase_s,
            "step_s": rollout_s + med[name],
            "learn_ratio_to_baseline": med[name] / med[baseline],
            "step_ratio_to_baseline": (rollout_s + med[name]) / (rollout_s + med[baseline]),
            "phase_ratio_to_baseline": {
                p: phase_s[p]["median"] / base_phase[p] if base_phase[p] > 0 else None for p in phases
            },
            "losses": rs[0]["losses"],
            "runs": [
                {k: x[k] for k in ("total", "phases", "load_avg", "losses", "beliefs_from_cache_share")} for x in rs
            ],
        }
    multi = [tr for tr in trajs if tr.num_turns >= 2]
    return {
        "baseline": baseline,
        "order": [name for _ in range(repeats) for name in available],
        "repeats": repeats,
        "tolerances": {"losses": LOSS_TOL, "beliefs": BELIEF_TOL},
        "episodes": len(trajs),
        "episodes_with_beliefs": len(multi),
        "belief_prefixes": sum(len(tr.belief_prefixes()) for tr in multi),
        "turns": sum(tr.num_turns for tr in trajs),
        "tokens": sum(len(tr.ids) for tr in trajs),
        "generated_tokens": sum(t.gen_end - t.gen_start for tr in trajs for t in tr.turns),
        "rollout_s": rollout_s,
        "load_avg_at_rollout": load,
        "configurations": out,
    }


def tiny_model(vocab_size: int):
    """A randomly initialised 2-layer Llama (hidden 64) for `--small`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def trainer_inputs(args: argparse.Namespace, out_dir: Path) -> tuple[Config, Any, Any]:
    """(config, model, tokenizer) of the demo's regime (or `--small`'s), with IGPO's estimator so that beliefs are
    scored; VitalFactbook is built into `--data-dir` if the config reads it from there and it is missing."""
    from igpo.demo import prepare_data
    from igpo.policy.loading import load_policy
    from igpo.train.sft import sft_done

    overrides = ["algorithm.estimator=igpo", "trainer.save_every=0", "trainer.eval_every=0"]
    overrides += [f"trainer.out_dir={out_dir}", *(SMALL if args.small else []), *args.set]
    cfg = load_config(args.config, overrides)
    if args.model is None and args.small:
        args.model = "smollm2"  # its tokenizer, for the tiny model
    if args.model is None:
        if not sft_done(cfg.sft.out_dir):
            sys.exit(
                f"no SFT warm start in {cfg.sft.out_dir}: make it with `igpo sft --config {args.config}` (or "
                "`igpo demo`), or pass --model (the base smollm2 writes no tool call zero-shot: no beliefs to score)"
            )
        args.model = str(Path(cfg.sft.out_dir) / "model")
    cfg.model.path = args.model
    cfg.model.lora.enabled = False  # as the demo's RL: from the warm start's merged weights
    prepare_data(cfg, args.data_dir)
    model, tok = load_policy(cfg.model)
    if args.small:
        model = tiny_model(len(tok))
    return cfg, model, tok


def build_trainer(args: argparse.Namespace, out_dir: Path) -> Trainer:
    """The trainer of `trainer_inputs`."""
    cfg, model, tok = trainer_inputs(args, out_dir)
    return Trainer(cfg, model=model, tokenizer=tok)


def regime(cfg: Config) -> dict:
    """What the step does: questions, rollouts, turns, tokens, temperature, micro-batch, estimator, KL."""
    r = cfg.rollout
    return {
        "questions": r.questions_per_step,
        "group_size": r.group_size,
        "max_turns": r.max_turns,
        "max_new_tokens": r.max_new_tokens,
        "temperature": r.temperature,
        "micro_batch_size": cfg.trainer.micro_batch_size,
        "estimator": cfg.algorithm.estimator,
        "kl_coef": cfg.algorithm.kl_coef,
    }


def add_trainer_options(ap: argparse.ArgumentParser) -> None:
    """The options `trainer_inputs` reads, but `--small`: --config, --model, --data-dir, --set."""
    ap.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    ap.add_argument("--model", help="model path (default: the config's SFT warm start, sft.out_dir/model)")
    ap.add_argument(
        "--data-dir", type=Path, default=Path("data/vitalfactbook"), help="VitalFactbook (built if missing)"
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (repeatable)")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_trainer_options(ap)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each configuration, interleaved")
    ap.add_argument("--small", action="store_true", help="a tiny random model and a small step: a quick check")
    add_threads_option(ap)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/step.json"))
    args = ap.parse_args(argv)
    apply_threads(args)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(args, Path(tmp) / "run")
        known = {key for key, _ in config_fields()}
        measured = measure(trainer, configuration_settings(known), args.repeats)
    result = {
        "model": "tiny random Llama (--small)" if args.small else args.model,
        "device": trainer.cfg.model.device,
        "machine": machine_record(),
        "regime": regime(trainer.cfg),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        **measured,
    }
    summary = {
        name: {k: c[k] for k in ("learn_ratio_to_baseline", "exact")} if c["available"] else c["why"]
        for name, c in measured["configurations"].items()
    }
    print(json.dumps({"rollout_s": measured["rollout_s"], "configurations": summary}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
