"""The update's scoring pass, on the policy's tokens only (fast path) vs every position after the prompt (reference).

Real multi-turn trajectories: SFT demonstrations of VitalFactbook questions played through the rollout loop with
real BM25 results (search, read, search, answer), so most scored positions are tool results, as in RL. Each pass
is what one PPO micro-batch does: per-token log-probs and entropies under SmolLM2-135M (fp32), a loss over the
loss mask, backward. Each path runs in its own process (so the peak RSS is its own), `--rounds` times,
alternating which goes first; the run asserts both give the same masked log-probs (1e-4). Each path's pass time
is reported as median, min / max and quartiles over every timed repeat of every round, with the machine (CPU
model, flags, torch's CPU capability, threads) and the load average before each repeat.

    python benchmarks/update_scoring.py --out benchmarks/results/update_scoring.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import add_threads_option, apply_threads, load_average, machine_record, summarize


def _trajectories(args):
    import random

    from igpo.agent.build import make_chat_format, make_toolbox
    from igpo.config import load_config
    from igpo.data.loaders import load_qa
    from igpo.policy.loading import load_policy
    from igpo.train.sft import plan_demos, play_demos

    cfg = load_config(args.config)
    model, tok = load_policy(cfg.model)
    toolbox = make_toolbox(cfg)
    fmt = make_chat_format(cfg, tok, toolbox)
    examples = load_qa(cfg.data.train)[: args.episodes * 4]
    demos = plan_demos(examples, random.Random(0), 0.15, 0.1)
    r = cfg.rollout
    trajs, _, _ = play_demos(demos, fmt, toolbox, r.max_turns, r.max_context, r.max_new_tokens)
    return model, tok, trajs[: args.episodes]


def run_path(args) -> dict:
    import torch

    from igpo.policy.scoring import token_logprobs
    from igpo.train.batching import collate

    apply_threads(args)
    model, tok, trajs = _trajectories(args)
    model.train()
    batches = [
        collate(trajs[i : i + args.micro_batch], tok.pad_token_id) for i in range(0, len(trajs), args.micro_batch)
    ]
    times, values, loads = [], [], []
    for rep in range(args.warmup + args.repeats):
        load = load_average()
        t = time.perf_counter()
        for b in batches:
            mask = b["loss_mask"]
            lp, ent = token_logprobs(
                model,
                b["ids"],
                b["attn"],
                start=int(b["prompt_len"].min()),
                with_entropy=True,
                score_mask=mask if args.path == "fast" else None,
            )
            loss = -(lp * mask).sum() / mask.sum() - 0.001 * (ent * mask).sum() / mask.sum()
            loss.backward()
            if rep == 0:
                values.append(lp[mask].detach())
        model.zero_grad(set_to_none=True)
        if rep >= args.warmup:
            times.append(time.perf_counter() - t)
            loads.append(load)
    n_scored = sum(int(b["attn"][:, int(b["prompt_len"].min()) :].sum()) for b in batches)
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "load_avg_before_each": loads,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss_tokens": int(sum(int(b["loss_mask"].sum()) for b in batches)),
        "positions_after_prompt": n_scored,
        "tokens": int(sum(len(tr.ids) for tr in trajs)),
        "masked_logprobs": torch.cat(values).tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--path", choices=["fast", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/update_scoring.json"))
    add_threads_option(ap)
    args = ap.parse_args()
    if args.path:
        print(json.dumps(run_path(args)))
        return
    apply_threads(args)
    load = load_average()
    runs: dict[str, list[dict]] = {"fast": [], "reference": []}
    for rnd in range(args.rounds):
        for path in ["fast", "reference"] if rnd % 2 == 0 else ["reference", "fast"]:
            cmd = [
                sys.executable,
                __file__,
                "--path",
                path,
                "--config",
                args.config,
                "--episodes",
                str(args.episodes),
                "--micro-batch",
                str(args.micro_batch),
                "--warmup",
                str(args.warmup),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            runs[path].append(json.loads(out))
            print(
                f"round {rnd} {path}: {runs[path][-1]['median_s']:.2f} s, peak RSS {runs[path][-1]['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    import torch

    diff = float(
        (torch.tensor(runs["fast"][0]["masked_logprobs"]) - torch.tensor(runs["reference"][0]["masked_logprobs"]))
        .abs()
        .max()
    )
    assert diff <= 1e-4, f"fast and reference scoring disagree by {diff}"
    summary = {}
    for path, rs in runs.items():
        summary[path] = {
            "median_s": statistics.median(t for r in rs for t in r["times_s"]),
            "seconds_summary": summarize([t for r in rs for t in r["times_s"]]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
        }
    first = runs["fast"][0]
    result = {
        "what": "forward + backward of the update's scoring (log-probs, entropy) over real multi-turn trajectories",
        "model": "SmolLM2-135M-Instruct",
        "device": "cpu",
        "threads": args.threads,
        "machine": machine_record(),
        "load_avg_at_start": load,
        "episodes": args.episodes,
        "micro_batch": args.micro_batch,
        "tokens": first["tokens"],
        "positions_after_prompt": first["positions_after_prompt"],
        "loss_tokens": first["loss_tokens"],
        "max_abs_logprob_diff": diff,
        **summary,
        "speedup_vs_reference": summary["reference"]["median_s"] / summary["fast"]["median_s"],
        "peak_rss_ratio_vs_reference": summary["fast"]["peak_rss_mb"] / summary["reference"]["peak_rss_mb"],
        "rounds": {p: [{k: v for k, v in r.items() if k != "masked_logprobs"} for r in rs] for p, rs in runs.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(
        json.dumps(
            {k: result[k] for k in ("speedup_vs_reference", "peak_rss_ratio_vs_reference", "max_abs_logprob_diff")}
        )
    )


if __name__ == "__main__":
    main()
