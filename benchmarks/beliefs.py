"""Belief scoring cost: packed (ours) vs reference vs the official code's way vs one plain forward.

(a) packed: `belief_logprobs_packed`, one forward per `--rows` trajectories: each trajectory once, then per prefix
    the belief probe once and every alias after it;
(b) reference: `belief_logprobs_reference`, one forward per (prefix, alias);
(c) official: for every turn and alias, one padded forward over every row's context up to that turn plus the probe,
    for every row of the batch (rows with fewer turns, i.e. finished ones, included), full logits, as the authors'
    code does;
(d) floor: one plain forward over the trajectories (`--rows` a batch, last-position logits only).
Trajectories are realistic synthetic ones in the real chat format: the prompt, `--tool-turns` turns each a
generation (a short think and a search call) and a search result of `--result-words` words, then an answer turn;
beliefs are taken after the prompt and after each tool turn. The methods run interleaved, `--repeats` times, in a
rotating order; medians are reported, with each method's min / max / quartiles, the machine (CPU model, flags,
torch's CPU capability, threads) and the load average before each method's run. Asserts that (a) and (b) agree to
1e-4.

    python benchmarks/beliefs.py --out benchmarks/results/beliefs.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from common import add_threads_option, load_average, load_eval_model, machine_record, summaries
from igpo.agent.template import DEFAULT_SYSTEM_PROMPT, ChatFormat
from igpo.policy.scoring import (
    BeliefQuery,
    belief_logprobs_packed,
    belief_logprobs_reference,
)

WORDS = [
    "the",
    "country",
    "capital",
    "river",
    "mountain",
    "population",
    "anthem",
    "founded",
    "century",
    "city",
    "museum",
    "president",
    "national",
    "language",
    "border",
    "island",
    "currency",
    "treaty",
    "empire",
    "composer",
    "born",
    "film",
    "directed",
    "novel",
    "written",
]
SCHEMA = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    }
]


def synthetic(fmt: ChatFormat, rng: random.Random, tool_turns: int, result_words: int, n_alias: int) -> BeliefQuery:
    def words(k: int) -> str:
        return " ".join(rng.choices(WORDS, k=k))

    def generation(text: str) -> list[int]:
        return fmt.encode_text(text) + [fmt.eot_ids[0]]  # as sampled: ends with the stop token

    ids = fmt.prompt_ids(f"What is the {words(12)}?")
    prefixes = [len(ids)]
    for _ in range(tool_turns):
        call = json.dumps({"name": "search", "arguments": {"query": words(5)}})
        gen = generation(f"<think>{words(15)}</think>\n<tool_call>{call}</tool_call>")
        ids = ids + gen + fmt.close_generation(gen) + fmt.tool_message_ids(words(result_words))
        prefixes.append(len(ids))
    gen = generation(f"<think>{words(8)}</think>\n<answer>{words(2)}</answer>")
    ids = ids + gen + fmt.close_generation(gen)
    answers = [fmt.encode_text(words(1 + k)) for k in range(n_alias)]
    return BeliefQuery(ids, prefixes, answers)


@torch.no_grad()
def official_way(model, probe, queries):
    """Every turn × alias: one padded forward over every row's context up to that turn + probe (all rows)."""
    pad = 0
    T = max(len(q.prefixes) for q in queries)
    for t in range(T):
        for k in range(max(len(q.answers) for q in queries)):
            rows = [
                q.ids[: q.prefixes[min(t, len(q.prefixes) - 1)]] + probe + q.answers[min(k, len(q.answers) - 1)]
                for q in queries
            ]
            width = max(map(len, rows))
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            model(input_ids=ids, attention_mask=mask)


@torch.no_grad()
def plain_forward(model, queries, rows: int):
    for lo in range(0, len(queries), rows):
        chunk = [q.ids for q in queries[lo : lo + rows]]
        width = max(map(len, chunk))
        ids = torch.tensor([c + [0] * (width - len(c)) for c in chunk])
        mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunk])
        model(input_ids=ids, attention_mask=mask, logits_to_keep=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trajectories", type=int, default=8)
    ap.add_argument("--tool-turns", type=int, default=4)
    ap.add_argument("--result-words", type=int, default=30)
    ap.add_argument("--aliases", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--rows", type=int, default=4, help="trajectories per packed (and floor) forward")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-official", action="store_true")
    add_threads_option(ap)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/beliefs.json"))
    args = ap.parse_args()

    model, tok = load_eval_model(args)
    fmt = ChatFormat(
        tok, DEFAULT_SYSTEM_PROMPT, SCHEMA, "\nNow there's enough information to answer\n</think>\n<answer>\n"
    )
    results = {
        "model": "SmolLM2-135M-Instruct",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "machine": machine_record(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": [],
    }
    for n_alias in args.aliases:
        rng = random.Random(0)
        queries = [synthetic(fmt, rng, args.tool_turns, args.result_words, n_alias) for _ in range(args.trajectories)]
        methods = {
            "packed": partial(belief_logprobs_packed, model, fmt.belief_probe_ids, queries, args.rows),
            "reference": partial(belief_logprobs_reference, model, fmt.belief_probe_ids, queries),
            "floor": partial(plain_forward, model, queries, args.rows),
        }
        if not args.skip_official:
            methods["official"] = partial(official_way, model, fmt.belief_probe_ids, queries)
        plain_forward(model, queries[:1], 1)  # warm-up: first calls pay for allocation and kernel selection
        wall = {k: [] for k in methods}
        cpu = {k: [] for k in methods}
        loads, outputs = [], {}
        for r in range(args.repeats):
            names = list(methods)
            for name in names[r % len(names) :] + names[: r % len(names)]:
                loads.append({"repeat": r, "method": name, "load_avg": load_average()})
                t, c = time.perf_counter(), time.process_time()
                outputs[name] = methods[name]()
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
        diff = max(float((a - b).abs().max()) for a, b in zip(outputs["packed"], outputs["reference"]))
        assert diff < 1e-4, f"packed and reference beliefs differ by {diff}"
        med = {k: statistics.median(v) for k, v in wall.items()}
        run = {
            "aliases": n_alias,
            "trajectories": len(queries),
            "beliefs_per_trajectory": len(queries[0].prefixes),
            "mean_tokens": sum(len(q.ids) for q in queries) / len(queries),
            "max_abs_diff_packed_reference": diff,
            "median_s": med,
            "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
            "seconds": wall,
            "cpu_seconds": cpu,
            "load_avg_before_each_run": loads,
            "seconds_summary": summaries(wall),
            "cpu_seconds_summary": summaries(cpu),
            "packed_over_floor": med["packed"] / med["floor"],
            "reference_over_packed": med["reference"] / med["packed"],
        }
        if "official" in med:
            run["official_over_packed"] = med["official"] / med["packed"]
        print(
            json.dumps({k: v for k, v in run.items() if not k.startswith(("seconds", "cpu_seconds", "load"))}),
            flush=True,
        )
        results["runs"].append(run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
