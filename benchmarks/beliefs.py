"""Belief scoring cost: packed (ours) vs reference vs the official code's way vs one plain forward.

(a) packed: `belief_logprobs_packed`, one forward per trajectory batch with probe blocks;
(b) reference: one forward per (prefix, alias);
(c) official: for every turn and alias, a fresh forward over the full context + probe for every row of the
    batch, finished rows included (as the authors' code does);
(d) floor: one plain forward over the trajectories.
Trajectories are realistic synthetic ones built with the real chat format: a prompt and `turns` turns, each a
tool call and a ~100-token search result. Writes JSON with the timings and the ratios, and asserts (a) == (b).

    python benchmarks/beliefs.py --trajectories 8 --turns 4 --aliases 1 3 --out benchmarks/results/beliefs.json
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch

from igpo.agent.template import DEFAULT_SYSTEM_PROMPT, ChatFormat
from igpo.config import ModelConfig
from igpo.policy.loading import load_policy
from igpo.policy.scoring import BeliefQuery, belief_logprobs_packed, belief_logprobs_reference

WORDS = ("the country capital river mountain population anthem founded century city museum president national "
         "language border island currency treaty empire composer born film directed novel written").split()
SCHEMA = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {
    "query": {"type": "string"}}, "required": ["query"]}}}]


def synthetic(fmt: ChatFormat, rng: random.Random, turns: int, result_words: int, n_alias: int) -> BeliefQuery:
    ids = fmt.prompt_ids("What is the " + " ".join(rng.choices(WORDS, k=12)) + "?")
    prefixes = [len(ids)]
    for t in range(turns):
        call = '<tool_call>{"name": "search", "arguments": {"query": "%s"}}</tool_call>' % " ".join(rng.choices(WORDS, k=5))
        gen = fmt.encode_text("<think>" + " ".join(rng.choices(WORDS, k=15)) + "</think>\n" + call) + [fmt.eot_ids[0]]
        ids = ids + gen + fmt.close_generation(gen)
        if t < turns - 1:
            ids = ids + fmt.tool_message_ids(" ".join(rng.choices(WORDS, k=result_words)))
            prefixes.append(len(ids))
    answers = [fmt.encode_text(" ".join(rng.choices(WORDS, k=1 + k))) for k in range(n_alias)]
    return BeliefQuery(ids, prefixes, answers)


@torch.no_grad()
def official_way(model, scaffold, queries):
    """Every turn × alias: one padded forward over every row's context up to that turn + probe (all rows)."""
    pad = 0
    T = max(len(q.prefixes) for q in queries)
    for t in range(T):
        for k in range(max(len(q.answers) for q in queries)):
            rows = [q.ids[: q.prefixes[min(t, len(q.prefixes) - 1)]] + scaffold + q.answers[min(k, len(q.answers) - 1)]
                    for q in queries]
            width = max(map(len, rows))
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            model(input_ids=ids, attention_mask=mask)


@torch.no_grad()
def plain_forward(model, queries, rows: int):
    for lo in range(0, len(queries), rows):
        chunk = [q.ids for q in queries[lo:lo + rows]]
        width = max(map(len, chunk))
        ids = torch.tensor([c + [0] * (width - len(c)) for c in chunk])
        mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunk])
        model(input_ids=ids, attention_mask=mask, logits_to_keep=1)


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trajectories", type=int, default=8)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--result-words", type=int, default=80)
    ap.add_argument("--aliases", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--rows", type=int, default=4, help="trajectories per packed forward")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip-official", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/beliefs.json"))
    args = ap.parse_args()

    torch.set_num_threads(torch.get_num_threads())
    model, tok = load_policy(ModelConfig())
    model.eval()
    fmt = ChatFormat(tok, DEFAULT_SYSTEM_PROMPT, SCHEMA, "\nNow there's enough information to answer\n</think>\n<answer>\n")
    results = {"model": "SmolLM2-135M-Instruct", "device": "cpu", "threads": torch.get_num_threads(),
               "machine": platform.processor() or platform.machine(), "settings": vars(args) | {"out": str(args.out)},
               "runs": []}
    for n_alias in args.aliases:
        rng = random.Random(0)
        queries = [synthetic(fmt, rng, args.turns, args.result_words, n_alias) for _ in range(args.trajectories)]
        plain_forward(model, queries[:1], 1)  # warm-up: first calls pay for allocation and kernel selection
        run = {"aliases": n_alias, "mean_tokens": sum(len(q.ids) for q in queries) / len(queries)}
        run["packed_s"], fast = timed(lambda: belief_logprobs_packed(model, fmt.scaffold_ids, queries, args.rows), args.repeats)
        run["reference_s"], ref = timed(lambda: belief_logprobs_reference(model, fmt.scaffold_ids, queries), args.repeats)
        run["max_abs_diff"] = max(float((a - b).abs().max()) for a, b in zip(fast, ref))
        assert run["max_abs_diff"] < 1e-4, run
        run["floor_s"], _ = timed(lambda: plain_forward(model, queries, args.rows), args.repeats)
        if not args.skip_official:
            run["official_s"], _ = timed(lambda: official_way(model, fmt.scaffold_ids, queries), args.repeats)
            run["official_over_packed"] = run["official_s"] / run["packed_s"]
        run["reference_over_packed"] = run["reference_s"] / run["packed_s"]
        run["packed_over_floor"] = run["packed_s"] / run["floor_s"]
        print(json.dumps(run))
        results["runs"].append(run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
