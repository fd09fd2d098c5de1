"""Supervised warm start: demonstrations of the search loop, rendered exactly as rollouts are.

A small model does not follow a tool-call format zero-shot, so RL from scratch gets no signal. A demonstration
follows a question's stored plan (its `oracle_queries`, one per hop): one search per hop, each query naming the
entity the previous search found, then the answer. So a single-hop question is demonstrated with one search, a
two-hop one with two, a three-hop one with three. Some demonstrations first run an unhelpful search (another
question's query) or write a broken tool call and read the tool's error message. Those first generations are
context, not targets: the policy learns to go on after a search that did not help and to recover from an
error, without being taught to make either.

Demonstrations are played through `rollout()` by a teacher generator, so the template, the tool messages, the
token ids and the masks are exactly those of RL rollouts, and tool results are real retrieval results. The loss
is the mean negative log-likelihood of the trained generations' tokens (their sampled-token spans, including
the end-of-turn token); prompts and tool results are never trained on.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from igpo.agent.generators import Generator, SamplingParams
from igpo.agent.rollout import rollout
from igpo.agent.template import ChatFormat
from igpo.agent.tools import Toolbox
from igpo.agent.trajectory import Trajectory
from igpo.algo.rewards import normalize_answer
from igpo.config import Config, ConfigError, SftConfig, dump_config
from igpo.data.loaders import QAExample, load_qa
from igpo.machine import machine_record
from igpo.policy.scoring import token_logprobs
from igpo.train.batching import collate

log = logging.getLogger(__name__)

KINDS = ("clean", "wasted_search", "malformed_call")


@dataclass
class Demo:
    example: QAExample
    texts: list[str]  # the assistant generations, in order
    trained: list[bool]  # per generation: a training target, or context only
    kind: str  # one of KINDS


def call_text(query: str) -> str:
    return "<tool_call>" + json.dumps({"name": "search", "arguments": {"query": query}}) + "</tool_call>"


def answer_text(answer: str) -> str:
    return f"<answer>{answer}</answer>"


def _broken_call(query: str, rng: random.Random) -> str:
    """A tool call the parser rejects, in one of the ways small models get it wrong."""
    good = json.dumps({"name": "search", "arguments": {"query": query}})
    return rng.choice(
        [
            f"<tool_call>{good[:-1]}</tool_call>",  # unbalanced braces
            f"<tool_call>{{name: search, query: {query}}}</tool_call>",  # not JSON
            f"<tool_call>{good}",  # never closed
            "<tool_call>" + json.dumps({"arguments": {"query": query}}) + "</tool_call>",  # no tool name
        ]
    )


def bridges(example: QAExample) -> list[str]:
    """The entities the searches before the last must find, in order: `bridges` (VitalFactbook version 2), else
    `[bridge]`, else none."""
    found = example.meta.get("bridges")
    if found is None:
        found = [example.meta["bridge"]] if example.meta.get("bridge") else []
    return [str(b) for b in found]


def plan_queries(example: QAExample) -> list[str]:
    """The searches of the example's plan: its `oracle_queries`, one per hop. Raises ValueError naming the
    question when the plan and the bridge entities disagree (a three-hop plan needs two bridges)."""
    queries = [str(q) for q in example.meta["oracle_queries"]]
    if "bridges" in example.meta and len(bridges(example)) != len(queries) - 1:
        raise ValueError(
            f"question {example.id}: {len(queries)} oracle_queries but bridges "
            f"{bridges(example)}; a plan of n searches needs n - 1 bridge entities"
        )
    return queries


def sample_by_hops(pool: Sequence[QAExample], n: int, rng: random.Random) -> list[QAExample]:
    """`n` examples (all of them if fewer) with the hop counts (number of `oracle_queries`) in shares as equal as
    the pool allows: a count with fewer questions than its share gives the rest to the others."""
    by_hops: dict[int, list[QAExample]] = {}
    for ex in pool:
        by_hops.setdefault(len(ex.meta["oracle_queries"]), []).append(ex)
    left, chosen = min(n, len(pool)), []
    groups = sorted(by_hops.items(), key=lambda kv: len(kv[1]))  # smallest first: what they cannot fill passes on
    for k, (_, exs) in enumerate(groups):
        take = min(len(exs), left // (len(groups) - k))
        chosen += rng.sample(exs, take)
        left -= take
    rng.shuffle(chosen)
    return chosen


def plan_demos(
    examples: Sequence[QAExample],
    rng: random.Random,
    wasted_rate: float,
    malformed_rate: float,
    max_turns: int | None = None,
) -> list[Demo]:
    """One demonstration per example that has `oracle_queries` (others are skipped). A failed first attempt that
    would take the demonstration past `max_turns` generations is left out (the plan is demonstrated clean)."""
    usable = [ex for ex in examples if ex.meta.get("oracle_queries")]
    demos = []
    for ex in usable:
        queries = plan_queries(ex)
        texts = [call_text(q) for q in queries] + [answer_text(ex.answers[0])]
        u = rng.random()
        if max_turns is not None and len(texts) + 1 > max_turns:
            demos.append(Demo(ex, texts, [True] * len(texts), "clean"))
        elif u < malformed_rate:
            demos.append(
                Demo(ex, [_broken_call(queries[0], rng)] + texts, [False] + [True] * len(texts), "malformed_call")
            )
        elif u < malformed_rate + wasted_rate and len(usable) > 1:
            other = rng.choice([o for o in usable[:64] if o is not ex] or usable)
            wasted = call_text(str(other.meta["oracle_queries"][0]))
            demos.append(Demo(ex, [wasted] + texts, [False] + [True] * len(texts), "wasted_search"))
        else:
            demos.append(Demo(ex, texts, [True] * len(texts), "clean"))
    return demos


class TeacherGenerator(Generator):
    """Plays each demonstration's generations in order (a `Generator`); episodes are told apart by their prompt."""

    def __init__(self, fmt: ChatFormat, demos: Sequence[Demo]):
        self.fmt = fmt
        self.by_prompt = {tuple(fmt.prompt_ids(d.example.question)): d for d in demos}
        if len(self.by_prompt) != len(demos):
            raise ValueError("demonstrations played together must have distinct questions")
        self.lengths = sorted({len(k) for k in self.by_prompt})
        self.turn = {k: 0 for k in self.by_prompt}

    def generate(self, contexts: list[list[int]], params: SamplingParams, stop_ids: list[int]) -> list[list[int]]:
        out = []
        for ctx in contexts:
            key = next(k for n in self.lengths if (k := tuple(ctx[:n])) in self.by_prompt)
            demo = self.by_prompt[key]
            text = demo.texts[min(self.turn[key], len(demo.texts) - 1)]
            self.turn[key] += 1
            out.append(self.fmt.encode_text(text) + [self.fmt.eot_ids[0]])
        return out


def _grounded(demo: Demo, tr: Trajectory) -> bool:
    """Each hop's results name the bridge entity the next search needs, and the last search's results hold a
    gold answer."""
    results = [t.tool_result or "" for t, keep in zip(tr.turns, demo.trained) if keep and t.action.kind == "tool_call"]
    if not results:
        return False
    for bridge, result in zip(bridges(demo.example), results[:-1]):
        if normalize_answer(bridge) not in normalize_answer(result):
            return False
    last = normalize_answer(results[-1])
    return any(normalize_answer(a) in last for a in demo.example.answers)


def play_demos(
    demos: Sequence[Demo],
    fmt: ChatFormat,
    toolbox: Toolbox,
    max_turns: int,
    max_context: int,
    max_new_tokens: int,
    grounded_only: bool = True,
    batch: int = 64,
) -> tuple[list[Trajectory], list[list[bool]], dict]:
    """(trajectories, per-trajectory loss masks, counts) of the demonstrations that play out as planned."""
    trajs, masks = [], []
    counts: dict = {"planned": len(demos), "too_long": 0, "not_grounded": 0, "by_kind": dict.fromkeys(KINDS, 0)}
    demos = [d for d in demos if len(d.texts) <= max_turns]
    counts["too_long"] = counts["planned"] - len(demos)
    for lo in range(0, len(demos), batch):
        chunk = list(demos[lo : lo + batch])
        played = rollout(
            [d.example for d in chunk],
            list(range(lo, lo + len(chunk))),
            TeacherGenerator(fmt, chunk),
            fmt,
            toolbox,
            SamplingParams(max_new_tokens, 0.0),
            max_turns,
            max_context,
        )
        for d, tr in zip(chunk, played):
            played_as_planned = tr.num_turns == len(d.texts) and all(
                tr.ids[t.gen_start : t.gen_end] == fmt.encode_text(text) + [fmt.eot_ids[0]]
                for t, text in zip(tr.turns, d.texts)
            )
            if tr.finish != "answer" or not played_as_planned:
                counts["too_long"] += 1  # cut by max_new_tokens or max_context
                continue
            if grounded_only and not _grounded(d, tr):
                counts["not_grounded"] += 1
                continue
            mask = [False] * len(tr.ids)
            for t, keep in zip(tr.turns, d.trained):
                if keep:
                    mask[t.gen_start : t.gen_end] = [True] * (t.gen_end - t.gen_start)
            trajs.append(tr)
            masks.append(mask)
            counts["by_kind"][d.kind] += 1
    counts["kept"] = len(trajs)
    return trajs, masks, counts


def sft_loss(model, batch: dict[str, torch.Tensor], num_tokens: float, shared_prefix: bool = False) -> torch.Tensor:
    """Summed NLL of the batch's trained tokens divided by `num_tokens` (the optimizer step's count, so
    micro-batch gradients add up to the step's token mean); `shared_prefix`: see `token_logprobs`."""
    dev = next(model.parameters()).device
    length = int(batch["attn"].sum(1).max())
    ids, attn = batch["ids"][:, :length].to(dev), batch["attn"][:, :length].to(dev)
    mask = batch["loss_mask"][:, :length].to(dev)
    lp, _ = token_logprobs(model, ids, attn, score_mask=mask, shared_prefix=shared_prefix)
    return -(lp * mask).sum() / num_tokens


def train_sft(
    model,
    pad_id: int,
    trajs: Sequence[Trajectory],
    masks: Sequence[list[bool]],
    cfg: SftConfig,
    progress: Callable[[dict], None] | None = None,
) -> list[dict]:
    """AdamW over the demonstrations for `cfg.epochs`; one history row per optimizer step."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    per_epoch = math.ceil(len(trajs) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    rng = random.Random(cfg.seed)
    model.train()
    history = []
    for epoch in range(cfg.epochs):
        order = list(range(len(trajs)))
        rng.shuffle(order)
        for lo in range(0, len(order), cfg.batch_size):
            t0 = time.perf_counter()
            rows = order[lo : lo + cfg.batch_size]
            n_tok = float(sum(sum(masks[i]) for i in rows))
            opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for mlo in range(0, len(rows), cfg.micro_batch_size):
                sub = rows[mlo : mlo + cfg.micro_batch_size]
                batch = collate([trajs[i] for i in sub], pad_id, [masks[i] for i in sub])
                loss = sft_loss(model, batch, max(n_tok, 1.0), cfg.shared_prefix)
                loss.backward()
                loss_sum += float(loss.detach())
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            row = {
                "step": len(history),
                "epoch": epoch,
                "loss": loss_sum,
                "grad_norm": float(grad_norm),
                "tokens": int(sum(len(trajs[i].ids) for i in rows)),
                "trained_tokens": int(n_tok),
                "lr": sched.get_last_lr()[0],
                "seconds": round(time.perf_counter() - t0, 3),
                "total_steps": total,
            }
            history.append(row)
            if progress is not None:
                progress(row)
    return history


def sft_summary(res: dict) -> list[str]:
    """What a warm start did (`res`: what sft.json holds), in a few lines for a person to read."""
    d = res["demonstrations"]
    lines = [f"SFT: {d['kept']} of {d['planned']} demonstrations ({d['by_kind']}), final loss {res['final_loss']:.3f}"]
    if res["heldout"]:
        h = res["heldout"]
        lines.append(
            f"held-out ({h['n']} questions): valid generations {h['valid_generation_rate']:.2f}, "
            f"questions with a tool call {h['tool_call_rate']:.2f}, F1 {h['f1']:.3f}"
        )
    lines.append(f"model: {res['model_dir']}")
    return lines


def sft_done(out_dir: str | Path) -> bool:
    """A finished warm start: `sft.json` is written last, after the model."""
    return (Path(out_dir) / "sft.json").is_file() and (Path(out_dir) / "model" / "config.json").is_file()


def run_sft(
    cfg: Config, progress: Callable[[dict], None] | None = None, eval_progress: Callable[[int, int], None] | None = None
) -> dict:
    """The whole warm start: plan and play demonstrations, train, save `sft.out_dir/model`, then evaluate greedy
    format validity and tool-call rate on `sft.eval_size` held-out questions. Returns what `sft.json` holds."""
    from igpo.agent.build import make_chat_format, make_toolbox
    from igpo.eval.evaluate import evaluate_model
    from igpo.policy.loading import is_lora, load_policy

    s = cfg.sft
    if not cfg.data.train:
        raise ConfigError("data.train: a QA file with oracle_queries is required for sft")
    out = Path(s.out_dir)
    times: dict[str, float] = {}
    t = time.perf_counter()
    random.seed(s.seed)
    torch.manual_seed(s.seed)
    model, tok = load_policy(cfg.model)
    toolbox = make_toolbox(cfg)
    fmt = make_chat_format(cfg, tok, toolbox)
    pool = [ex for ex in load_qa(cfg.data.train, skip_bad_rows=cfg.data.skip_bad_rows) if ex.meta.get("oracle_queries")]
    if not pool:
        raise ConfigError(f"data.train: {cfg.data.train} has no questions with oracle_queries to demonstrate")
    rng = random.Random(s.seed)
    chosen = sample_by_hops(pool, s.examples, rng) if s.balance_hops else rng.sample(pool, min(len(pool), s.examples))
    r = cfg.rollout
    demos = plan_demos(chosen, rng, s.wasted_search_rate, s.malformed_call_rate, r.max_turns)
    trajs, masks, counts = play_demos(
        demos, fmt, toolbox, r.max_turns, r.max_context, r.max_new_tokens, s.grounded_only
    )
    if not trajs:
        raise ConfigError(f"sft: none of {counts['planned']} demonstrations fit the rollout limits ({counts})")
    times["demonstrations"] = time.perf_counter() - t
    log.info("sft: %s demonstrations kept (%s)", counts["kept"], counts["by_kind"])

    t = time.perf_counter()
    history = train_sft(model, tok.pad_token_id, trajs, masks, s, progress)
    times["train"] = time.perf_counter() - t
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    to_save = model.merge_and_unload() if is_lora(model) else model
    to_save.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    (out / "config.yaml").write_text(dump_config(cfg))

    heldout = None
    if s.eval_size and cfg.data.eval:
        t = time.perf_counter()
        dev = load_qa(cfg.data.eval, skip_bad_rows=cfg.data.skip_bad_rows)[: s.eval_size]
        res = evaluate_model(cfg, to_save, tok, dev, toolbox, progress=eval_progress)
        heldout = res["overall"]
        times["heldout_eval"] = time.perf_counter() - t
    summary = {
        "demonstrations": counts,
        "trained_tokens": sum(h["trained_tokens"] for h in history),
        "tokens": sum(h["tokens"] for h in history),
        "final_loss": history[-1]["loss"],
        "history": history,
        "heldout": heldout,
        "model_dir": str(model_dir),
        "seconds": {k: round(v, 1) for k, v in times.items()},
        # The same recipe gives other weights (last-bit rounding) under another torch build or CPU vector unit.
        "built_on": machine_record(),
    }
    (out / "sft.json").write_text(json.dumps(summary, indent=1))
    return summary


def run_sft_with_progress(cfg: Config, *, console=None, write: Callable[[str], None] | None = None) -> dict:
    """`run_sft` with its progress shown (`igpo.progress`, to `console` or through `write`): the steps, whose count
    is known once the demonstrations are played, then the held-out evaluation."""
    from igpo.progress import Progress

    steps = Progress("sft", console=console, write=write)
    held = Progress("sft: held-out eval", unit="question", console=console, write=write)

    def on_step(row: dict) -> None:
        steps.update(row["step"] + 1, row["total_steps"], info=f"loss {row['loss']:.3f}")

    def on_eval(done: int, total: int) -> None:
        steps.close()
        held.update(done, total)

    steps.open()
    try:
        return run_sft(cfg, progress=on_step, eval_progress=on_eval)
    finally:
        steps.close()
        held.close()
