"""Rollout sampling cost: per-episode seeded sampling (ours, `SeededSampler`) vs HF's batch sampler.

Training rollouts sample each row from its own seeded stream (Gumbel-max over a CPU generator per row), so that
an episode samples the same tokens in any batch and on any rank. The reference is `model.generate(do_sample=True)`,
which draws the whole batch from one stream. Both run the same `HFGenerator` on the same contexts; the cost is
per decoding step (generation runs until the longest row stops), repeated and interleaved; and the sampling
step alone on random logits of the model's vocabulary (ours vs softmax + multinomial), `--repeats` times too.
Writes JSON: per figure the repeats, their best, median, min / max and quartiles; the machine (CPU model, flags,
torch's CPU capability, threads) and the load average before each repeat.

    python benchmarks/seeded_sampling.py --batch 8 --new-tokens 64 --repeats 3 --out benchmarks/results/seeded_sampling.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from common import load_average, machine_record, summaries
from igpo.agent.generators import HFGenerator, SamplingParams, SeededSampler
from igpo.agent.template import DEFAULT_SYSTEM_PROMPT, ChatFormat
from igpo.config import ModelConfig
from igpo.policy.loading import load_policy

QUESTIONS = [
    "What is the capital of the country where the Eiffel Tower is?",
    "Who wrote the national anthem of Italy?",
    "Which river flows through the capital of Hungary?",
    "In which city is Big Ben?",
]


def sampler_only_ms(batch: int, vocab: int, n: int = 200) -> dict[str, float]:
    """Milliseconds per decoding step of the sampling alone, [batch, vocab] logits."""
    scores = torch.randn(batch, vocab)
    ours = SeededSampler(range(batch), 1.0, 1.0)
    fns = {
        "seeded": lambda: ours(None, scores.clone()).argmax(-1),
        "softmax_multinomial": lambda: torch.multinomial(torch.softmax(scores.clone(), -1), 1),
    }
    out = {}
    for name, f in fns.items():
        f()
        t = time.perf_counter()
        for _ in range(n):
            f()
        out[name] = (time.perf_counter() - t) / n * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/seeded_sampling.json"))
    args = ap.parse_args()

    model, tok = load_policy(ModelConfig(path=args.model))
    fmt = ChatFormat(tok, DEFAULT_SYSTEM_PROMPT, [], "\n<answer>\n")
    contexts = [fmt.prompt_ids(QUESTIONS[i % len(QUESTIONS)]) for i in range(args.batch)]
    gen = HFGenerator(model, tok.pad_token_id)
    modes = {"seeded": lambda r: list(range(r * args.batch, (r + 1) * args.batch)), "hf_batch_sampler": lambda r: None}
    per_step: dict[str, list[float]] = {m: [] for m in modes}
    sampler_ms: dict[str, list[float]] = {}
    loads = []
    for r in range(args.repeats):
        loads.append({"repeat": r, "load_avg": load_average()})
        for name, ms in sampler_only_ms(args.batch, model.config.vocab_size).items():
            sampler_ms.setdefault(name, []).append(ms)
        for name, seeds in modes.items():
            torch.manual_seed(r)
            params = SamplingParams(args.new_tokens, temperature=1.0, seeds=seeds(r))
            t = time.perf_counter()
            out = gen.generate(contexts, params, fmt.stop_ids)
            seconds = time.perf_counter() - t
            per_step[name].append(seconds / max(len(o) for o in out))
    best = {m: min(v) for m, v in per_step.items()}
    result = {
        "model": args.model,
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "context_tokens": sum(map(len, contexts)) / len(contexts),
        "threads": torch.get_num_threads(),
        "machine": machine_record(),
        "torch": torch.__version__,
        "load_avg_before_each_repeat": loads,
        "seconds_per_decoding_step": per_step,
        "best_seconds_per_step": best,
        "seconds_per_step_summary": summaries(per_step),
        "tokens_per_s": {m: args.batch / s for m, s in best.items()},
        "ratio_seeded_over_hf": best["seeded"] / best["hf_batch_sampler"],
        "sampler_only_ms_per_step": {m: statistics.median(v) for m, v in sampler_ms.items()},  # median of repeats
        "sampler_only_ms_summary": summaries(sampler_ms),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(
        json.dumps(
            {k: result[k] for k in ("tokens_per_s", "ratio_seeded_over_hf", "sampler_only_ms_per_step")}, indent=1
        )
    )


if __name__ == "__main__":
    main()
