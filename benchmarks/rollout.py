"""Rollout speed: the KV-cache engine (ours) vs `model.generate` over each episode's whole context every turn.

Three generators run the same episodes side by side, interleaved, `--repeats` times:
- engine: `CachedGenerator` (caches kept across turns, one batch of all active episodes, finished ones dropped);
- plain_loop: `model.generate` on each episode's whole context, episode after episode, every turn;
- batched_generate: `HFGenerator`, `model.generate` on the left-padded batch of all active episodes' whole contexts
  (the simple reference path, `rollout.engine: hf`).
The same questions, greedy, `--episodes` episodes of `--turns` turns. Every turn, each episode's generation is followed by a real search result (BM25 over the
corpus) exactly as `rollout` appends it (close of the generation, tool message, next assistant opening). The
query is the generation's tool-call query when it has one, else the question: SmolLM2 does not write tool calls
zero-shot, and the benchmark needs every episode to go on for all turns. The generated tokens of the two must be
identical (asserted); the figure is generated tokens per second, median over `--repeats` interleaved runs (each
generator's seconds also as min / max / quartiles, and the speedups per repeat). The JSON records the machine
(CPU model, flags, torch's CPU capability, threads) and the load average before each run.

    python benchmarks/rollout.py --corpus data/vitalfactbook/corpus.jsonl --questions data/vitalfactbook/dev.jsonl

`--arms` picks the generators (`engine` always: every arm is compared with it); `--set model.path=...` the model
of every arm (SmolLM2 by default). The arm `vllm` (in the vLLM
environment, .venv-vllm) is a `VLLMGenerator`, built as `rollout.backend: vllm` builds it (`make_generator` from
the config `--set` gives, then handed the model's weights as `build_agent` does), on the same questions, turns
and token budget, greedy, with the same torch threads. Its engine starts once, before the repeats: the start
(importing vLLM included) and that first push are timed apart, not in its tokens/s; before each of its runs a
weight push (not timed) resets its prefix cache, so that no run reuses what the one before computed. Its kernels
are not the HF model's, so its tokens may differ: recorded are its generated tokens and the share of episodes
whose tokens are all the engine's, not asserted. Reported: its tokens/s over the engine's, per repeat and of the
medians, and its settings (dtype, enforce_eager, context, the CPU engine's KV cache space). With `vllm`, the JSON
goes to `rollout_vllm.json`.

    VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind .venv-vllm/bin/python benchmarks/rollout.py \\
        --arms engine,vllm --set rollout.vllm.dtype=float32 --set rollout.vllm.enforce_eager=true
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from common import add_threads_option, load_average, load_eval_model, machine_record, summaries, vllm_settings
from igpo.agent.build import make_generator
from igpo.agent.engine import CachedGenerator
from igpo.agent.generators import Generator, HFGenerator, SamplingParams
from igpo.agent.parsing import parse_generation
from igpo.agent.template import DEFAULT_SYSTEM_PROMPT, ChatFormat
from igpo.agent.tools import SearchTool
from igpo.config import Config, load_config
from igpo.data.loaders import load_corpus, load_qa
from igpo.policy.loading import whole_weights
from igpo.policy.vllm_engine import INSTALL_HINT
from igpo.retrieval.bm25 import BM25Retriever

HF_ARMS = ("engine", "plain_loop", "batched_generate")  # the same model's forward: their tokens are asserted equal
ARMS = (*HF_ARMS, "vllm")
RESULTS = Path("benchmarks/results")


class OneByOne(Generator):
    """`model.generate` on one context at a time: the plain loop."""

    def __init__(self, generator: HFGenerator):
        self.generator = generator

    def generate(self, contexts, params, stop_ids):
        return [self.generator.generate([c], params, stop_ids)[0] for c in contexts]


def episodes(generator, fmt: ChatFormat, tool: SearchTool, questions: list[str], turns: int, params: SamplingParams):
    """Runs the episodes; returns generated ids per episode and turn, (wall, CPU) seconds in `generate`, final lengths."""
    contexts = [fmt.prompt_ids(q) for q in questions]
    generated: list[list[list[int]]] = [[] for _ in questions]
    wall = cpu = 0.0
    for turn in range(turns):
        t, c = time.perf_counter(), time.process_time()
        outs = generator.generate(contexts, params, fmt.stop_ids)
        wall, cpu = wall + time.perf_counter() - t, cpu + time.process_time() - c
        if turn == turns - 1:
            for i, gen in enumerate(outs):
                generated[i].append(gen)
            break
        queries = []
        for i, gen in enumerate(outs):
            generated[i].append(gen)
            action = parse_generation(fmt.tokenizer.decode(gen, skip_special_tokens=True))
            query = action.arguments.get("query") if action.kind == "tool_call" else None
            queries.append(query if isinstance(query, str) and query.strip() else questions[i])
        results = tool.run_batch([{"query": q} for q in queries])
        for i, (gen, res) in enumerate(zip(outs, results)):
            contexts[i] = contexts[i] + gen + fmt.close_generation(gen) + fmt.tool_message_ids(res.text)
    generator.release()
    return generated, (wall, cpu), [len(c) for c in contexts]


def parse_arms(text: str) -> list[str]:
    """`--arms`: generator names, comma-separated; `engine` among them, and `vllm` only where vLLM is installed."""
    arms = [a.strip() for a in text.split(",") if a.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or len(set(arms)) != len(arms):
        sys.exit(f"--arms {text}: {', '.join(unknown) or 'an arm named twice'} (choose from {', '.join(ARMS)})")
    if "engine" not in arms:
        sys.exit(f"--arms {text}: `engine` is required (every arm is compared with it)")
    if "vllm" in arms and importlib.util.find_spec("vllm") is None:
        sys.exit(
            f"--arms {text}: the arm vllm needs vLLM, which this Python ({sys.executable}) does not have: "
            f"{INSTALL_HINT}; then run this script with .venv-vllm/bin/python"
        )
    return arms


def start_vllm(cfg: Config, model, pad_id: int):
    """The `vllm` arm's generator as `rollout.backend: vllm` builds it, handed `model`'s weights (`build_agent`);
    the seconds of the engine's start and of that push."""
    t = time.perf_counter()
    generator = make_generator(cfg, model, pad_id)
    start_s = time.perf_counter() - t
    t = time.perf_counter()
    generator.push_weights(whole_weights(model), model)
    return generator, start_s, time.perf_counter() - t


def vllm_record(
    generator,
    cfg: Config,
    start: tuple[float, float],
    pushes: list[float],
    runs: list,
    engine_runs: list,
    seconds: dict[str, list[float]],
) -> dict:
    """What the `vllm` arm generated and how fast, against the engine: `runs` and `engine_runs` are each arm's
    generated ids (per episode, per turn) of every repeat, `seconds` every arm's seconds of every repeat."""
    tokens = [sum(len(g) for ep in out for g in ep) for out in runs]
    engine_tokens = sum(len(g) for ep in engine_runs[0] for g in ep)
    per_repeat = [(n / s) / (engine_tokens / e) for n, s, e in zip(tokens, seconds["vllm"], seconds["engine"])]
    return {
        "settings": {**vllm_settings(cfg), "engine_dtype": str(generator.engine.dtype)},
        "start_s": start[0],
        "first_push_s": start[1],
        "push_s_before_each_run": pushes,  # not timed in its runs
        "generated_tokens": tokens[0],
        "generated_tokens_per_repeat": tokens,
        "generated_per_turn": [[len(g) for g in ep] for ep in runs[0]],
        "identical_across_repeats": all(out == runs[0] for out in runs),
        # an episode counts when every turn's tokens are the engine's
        "identical_to_engine_share": sum(v == e for v, e in zip(runs[0], engine_runs[0])) / len(engine_runs[0]),
        "tokens_per_s_over_engine_per_repeat": per_repeat,
        "tokens_per_s_over_engine_median_of_repeats": statistics.median(per_repeat),
    }


def measure(makers: dict, run, repeats: int) -> dict:
    """`repeats` rounds of `run(generator)` (`episodes`) with each of `makers`' generators, the first to go rotating:
    each arm's seconds (wall, CPU) and generated ids of every round, the load average before each run; the HF arms'
    generated ids (asserted the same) and the engine's cache counts and final context lengths."""
    out = {k: {name: [] for name in makers} for k in ("seconds", "cpu_seconds", "outs")}
    out["loads"], out["reference"] = [], None
    for r in range(repeats):
        order = list(makers)[r % len(makers) :] + list(makers)[: r % len(makers)]  # rotate who goes first
        for name in order:
            gen = makers[name]()
            out["loads"].append({"repeat": r, "generator": name, "load_avg": load_average()})
            ids, sec, lengths = run(gen)
            out["seconds"][name].append(sec[0])
            out["cpu_seconds"][name].append(sec[1])
            out["outs"][name].append(ids)
            if name in HF_ARMS:
                if out["reference"] is None:
                    out["reference"] = ids
                assert ids == out["reference"], f"{name}: generated tokens differ from the first run"
            if name == "engine":
                out["engine_stats"], out["engine_final_lengths"] = gen.stats, lengths
            print(name, f"{sec[0]:.2f} s wall, {sec[1]:.2f} s CPU", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("data/vitalfactbook/corpus.jsonl"))
    ap.add_argument("--questions", type=Path, default=Path("data/vitalfactbook/dev.jsonl"))
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--turns", type=int, default=4)
    # Defaults of rollout.max_new_tokens, retrieval.topk and retrieval.max_passage_words.
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--max-words", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--arms", default=",".join(HF_ARMS), help=f"generators, comma-separated: {', '.join(ARMS)}")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override (repeatable): model.* (every arm's model), rollout.vllm.*, rollout.max_context",
    )
    add_threads_option(ap)
    ap.add_argument("--out", type=Path, help="default: results/rollout.json, results/rollout_vllm.json with vllm")
    args = ap.parse_args(argv)
    arms = parse_arms(args.arms)
    args.out = args.out or RESULTS / ("rollout_vllm.json" if "vllm" in arms else "rollout.json")
    # `rollout.backend` only decides what the vllm arm is built as; the HF arms take the model from it too.
    cfg = load_config(None, [*args.set, "rollout.backend=vllm"])

    model, tok = load_eval_model(args, cfg.model)
    tool = SearchTool(BM25Retriever(load_corpus(args.corpus)), args.topk, args.max_words)
    fmt = ChatFormat(tok, DEFAULT_SYSTEM_PROMPT, [tool.schema()], "\n<answer>\n")
    questions = [ex.question for ex in load_qa(args.questions)[: args.episodes]]
    params = SamplingParams(args.max_new_tokens, temperature=0.0)
    makers = {
        "engine": lambda: CachedGenerator(model, tok.pad_token_id),
        "plain_loop": lambda: OneByOne(HFGenerator(model, tok.pad_token_id)),
        "batched_generate": lambda: HFGenerator(model, tok.pad_token_id),
    }
    makers = {k: v for k, v in makers.items() if k in arms}
    vllm_gen, vllm_pushes = None, []
    try:
        if "vllm" in arms:
            vllm_gen, *vllm_start = start_vllm(cfg, model, tok.pad_token_id)
            episodes(vllm_gen, fmt, tool, questions[:1], 1, SamplingParams(4, 0.0))  # warm-up

            def vllm_arm():
                # A push resets the prefix cache: the run computes its prompts' keys and values as the first did.
                t = time.perf_counter()
                vllm_gen.push_weights(whole_weights(model), model)
                vllm_pushes.append(time.perf_counter() - t)
                return vllm_gen

            makers["vllm"] = vllm_arm
        episodes(makers["engine"](), fmt, tool, questions[:1], 1, SamplingParams(4, 0.0))  # warm-up
        runs = measure(makers, lambda gen: episodes(gen, fmt, tool, questions, args.turns, params), args.repeats)
    finally:
        if vllm_gen is not None:
            vllm_gen.close()  # also when a run failed: a process holds one engine at a time
    seconds, cpu_seconds, outs, reference = runs["seconds"], runs["cpu_seconds"], runs["outs"], runs["reference"]
    stats, final_lengths = runs["engine_stats"], runs["engine_final_lengths"]
    tokens = sum(len(g) for ep in reference for g in ep)
    arm_tokens = {k: tokens if k in HF_ARMS else sum(len(g) for ep in outs[k][0] for g in ep) for k in makers}
    med = {k: statistics.median(v) for k, v in seconds.items()}
    tokens_per_s = {k: arm_tokens[k] / v for k, v in med.items()}
    result = {
        "model": "SmolLM2-135M-Instruct" if cfg.model.path == "smollm2" else cfg.model.path,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "machine": machine_record(),
        "load_avg_before_each_run": runs["loads"],
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "generated_tokens": tokens,
        "generated_per_turn": [[len(g) for g in ep] for ep in reference],
        "final_context_tokens": final_lengths,
        "engine_ids_computed": stats["computed_ids"],
        "engine_ids_reused": stats["reused_ids"],
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "median_s": med,
        "seconds_summary": summaries(seconds),
        "cpu_seconds_summary": summaries(cpu_seconds),
        "median_cpu_s": {k: statistics.median(v) for k, v in cpu_seconds.items()},
        "tokens_per_s": tokens_per_s,
    }
    others = [k for k in ("plain_loop", "batched_generate") if k in makers]
    for k in others:
        result[f"speedup_vs_{k}"] = med[k] / med["engine"]
    # within each repeat, so that a load change between repeats does not enter the ratio
    result["speedup_per_repeat"] = {k: [a / b for a, b in zip(seconds[k], seconds["engine"])] for k in others}
    result["identical_tokens"] = True  # between the HF arms (asserted); the vllm arm's: `vllm`
    if "vllm" in makers:
        result["vllm"] = vllm_record(
            vllm_gen, cfg, tuple(vllm_start), vllm_pushes, outs["vllm"], outs["engine"], seconds
        )
        result["vllm_over_engine_tokens_per_s"] = tokens_per_s["vllm"] / tokens_per_s["engine"]
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "generated_tokens",
                    "median_s",
                    "tokens_per_s",
                    *(f"speedup_vs_{k}" for k in others),
                    *(["vllm_over_engine_tokens_per_s"] if "vllm" in makers else []),
                )
            }
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
