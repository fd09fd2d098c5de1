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
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from common import add_threads_option, load_average, load_eval_model, machine_record, summaries
from igpo.agent.engine import CachedGenerator
from igpo.agent.generators import Generator, HFGenerator, SamplingParams
from igpo.agent.parsing import parse_generation
from igpo.agent.template import DEFAULT_SYSTEM_PROMPT, ChatFormat
from igpo.agent.tools import SearchTool
from igpo.data.loaders import load_corpus, load_qa
from igpo.retrieval.bm25 import BM25Retriever


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
    release = getattr(generator, "release", None)
    if release is not None:
        release()
    return generated, (wall, cpu), [len(c) for c in contexts]


def main() -> None:
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
    add_threads_option(ap)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/rollout.json"))
    args = ap.parse_args()

    model, tok = load_eval_model(args)
    tool = SearchTool(BM25Retriever(load_corpus(args.corpus)), args.topk, args.max_words)
    fmt = ChatFormat(tok, DEFAULT_SYSTEM_PROMPT, [tool.schema()], "\n<answer>\n")
    questions = [ex.question for ex in load_qa(args.questions)[: args.episodes]]
    params = SamplingParams(args.max_new_tokens, temperature=0.0)
    makers = {
        "engine": lambda: CachedGenerator(model, tok.pad_token_id),
        "plain_loop": lambda: OneByOne(HFGenerator(model, tok.pad_token_id)),
        "batched_generate": lambda: HFGenerator(model, tok.pad_token_id),
    }
    episodes(makers["engine"](), fmt, tool, questions[:1], 1, SamplingParams(4, 0.0))  # warm-up
    seconds: dict[str, list[float]] = {k: [] for k in makers}
    cpu_seconds: dict[str, list[float]] = {k: [] for k in makers}
    loads = []
    reference = None
    for r in range(args.repeats):
        order = list(makers)[r % len(makers) :] + list(makers)[: r % len(makers)]  # rotate who goes first
        for name in order:
            gen = makers[name]()
            loads.append({"repeat": r, "generator": name, "load_avg": load_average()})
            out, sec, final_lengths = episodes(gen, fmt, tool, questions, args.turns, params)
            seconds[name].append(sec[0])
            cpu_seconds[name].append(sec[1])
            if reference is None:
                reference = out
            assert out == reference, f"{name}: generated tokens differ from the first run"
            if name == "engine":
                stats = gen.stats
            print(name, f"{sec[0]:.2f} s wall, {sec[1]:.2f} s CPU", flush=True)
    tokens = sum(len(g) for ep in reference for g in ep)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    result = {
        "model": "SmolLM2-135M-Instruct",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "machine": machine_record(),
        "load_avg_before_each_run": loads,
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
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "speedup_vs_plain_loop": med["plain_loop"] / med["engine"],
        "speedup_vs_batched_generate": med["batched_generate"] / med["engine"],
        # within each repeat, so that a load change between repeats does not enter the ratio
        "speedup_per_repeat": {
            k: [a / b for a, b in zip(seconds[k], seconds["engine"])] for k in ("plain_loop", "batched_generate")
        },
        "identical_tokens": True,
    }
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "generated_tokens",
                    "median_s",
                    "tokens_per_s",
                    "speedup_vs_plain_loop",
                    "speedup_vs_batched_generate",
                )
            }
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
