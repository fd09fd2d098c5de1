"""How training moved the first token of the greedy answers: a teacher-forced diagnostic, not a speed benchmark.

The `--before` model answers the dev questions greedily (the real rollout loop, tools included). Each trajectory is
cut where its answer starts: at the token that closes the `<answer>` tag, because a tokenizer may fuse the tag's
`>` with the answer's first characters (SmolLM2 writes `>.` as one token). At that context both models score the
token the `--before` model chose. Per chosen token: how many answers start with it, its mean probability before and
after, and on how many the `--after` model's argmax differs. Written as JSON to `--out`, with the machine (CPU model,
flags, torch's CPU capability, threads): the greedy trajectories, and so the figures, depend on the CPU's rounding.

    python benchmarks/answer_start.py --after runs/demo/checkpoints/step_000006 \
        --match "What is the internet country code" --out benchmarks/results/answer_start.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from common import machine_record
from igpo.agent.build import build_agent
from igpo.agent.generators import SamplingParams
from igpo.agent.parsing import ANSWER_OPEN
from igpo.agent.rollout import rollout
from igpo.config import load_config
from igpo.data.loaders import load_qa
from igpo.policy.loading import load_checkpoint


def answer_start(tok, traj) -> int | None:
    """Index into `traj.ids` of the token that completes the answer tag (or of the first answer token when the tag
    ends on a token boundary); None when the trajectory gave no answer."""
    if traj.finish != "answer":
        return None
    turn = traj.turns[-1]
    gen = traj.ids[turn.gen_start : turn.gen_end]
    for k in range(1, len(gen) + 1):
        text = tok.decode(gen[:k])
        if ANSWER_OPEN in text:
            return turn.gen_start + k - (0 if text.endswith(ANSWER_OPEN) else 1)
    return None


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--before", default="runs/demo/sft/model", help="checkpoint that plays the trajectories")
    ap.add_argument("--after", required=True, help="checkpoint after training")
    ap.add_argument("--limit", type=int, default=100, help="first N questions of data.eval")
    ap.add_argument("--match", default="", help="keep questions that start with this text")
    ap.add_argument("--out", default="benchmarks/results/answer_start.json")
    args = ap.parse_args()

    cfg = load_config(args.config, [])
    before, tok = load_checkpoint(Path(args.before), cfg.model)
    after, _ = load_checkpoint(Path(args.after), cfg.model)
    before.eval(), after.eval()
    agent = build_agent(cfg, before, tok)
    examples = [e for e in load_qa(cfg.data.eval)[: args.limit] if e.question.startswith(args.match)]
    r = cfg.rollout
    trajs = rollout(
        examples,
        list(range(len(examples))),
        agent.generator,
        agent.fmt,
        agent.toolbox,
        SamplingParams(r.max_new_tokens, temperature=0.0),
        r.max_turns,
        r.max_context,
    )
    by_token: dict[str, list[tuple[float, float, bool]]] = defaultdict(list)
    for tr in trajs:
        pos = answer_start(tok, tr)
        if pos is None:
            continue
        ctx = torch.tensor([tr.ids[:pos]])
        chosen = tr.ids[pos]
        p_before = before(ctx).logits[0, -1].float().softmax(-1)
        p_after = after(ctx).logits[0, -1].float().softmax(-1)
        by_token[tok.decode([chosen])].append(
            (float(p_before[chosen]), float(p_after[chosen]), int(p_after.argmax()) != chosen)
        )
    rows = {
        t: {
            "answers": len(v),
            "p_before": sum(x[0] for x in v) / len(v),
            "p_after": sum(x[1] for x in v) / len(v),
            "p_before_range": [min(x[0] for x in v), max(x[0] for x in v)],
            "p_after_range": [min(x[1] for x in v), max(x[1] for x in v)],
            "argmax_changed": sum(x[2] for x in v),
        }
        for t, v in sorted(by_token.items(), key=lambda kv: -len(kv[1]))
    }
    result = {
        "before": args.before,
        "after": args.after,
        "questions": len(examples),
        "match": args.match,
        "answered": sum(len(v) for v in by_token.values()),
        "by_first_token": rows,
        "machine": machine_record(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for t, row in rows.items():
        print(
            f"{t!r:>12}  {row['answers']:3d} answers  p {row['p_before']:.3f} -> {row['p_after']:.3f}  "
            f"argmax changed on {row['argmax_changed']}"
        )


if __name__ == "__main__":
    main()
