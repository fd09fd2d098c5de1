"""Decode-step speed: eager vs `torch.compile` of SmolLM2's forward, one decoding step at a time (issue 28 item 3).

Arms (each: prefill a context of `--context` ids a row, eagerly and not timed, then greedy decoding steps):
- grow_eager: the engine's step (`CachedGenerator`): keys/values in `_GrowingLayer` buffers, a 2-D attention mask
  one column longer at every step;
- grow_compiled: the same step through `torch.compile(model.forward, dynamic=True)`;
- static_eager: shapes that do not change from one step to the next: transformers' `StaticLayer` buffers of
  `context + steps` columns, a 4-D boolean mask [B, 1, 1, capacity] whose column of the step is switched on in
  place, so attention runs over the whole buffer;
- static_compiled, static_frozen: that step compiled (`dynamic=False`: one graph per batch size), plain / with
  inductor's `freezing` option. Freezing leaves this graph as it is (torch 2.13: the weights reach it as inputs of
  the step function, not as attributes of a compiled module, so none becomes a constant; both graphs call
  `extern_kernels.mm` for every linear layer): static_frozen is a second static_compiled, which shows the noise.
Compiled steps regroup the query for grouped-query attention as eager steps do (`pack_gqa_when_compiled`; without
it, `--repeat-kv`, each step copies every layer's whole cache).

Interleaved: every repeat runs every batch size, and within it every arm, one after the other. Per arm and batch:
seconds per decoding step (mean over `--steps` steps after `--warmup` steps), the seconds of its first call (which
includes any compilation), the greedy tokens' agreement with grow_eager's and the largest |logit difference|
against grow_eager's logits over the steps whose inputs were the same. Load averages before each repeat.

    OMP_NUM_THREADS=1 python benchmarks/decode_compile.py --corpus data/vitalfactbook/corpus.jsonl --out /tmp/x.json

`--profile-steps N` adds, per arm and batch size, the top ops of N steps by self CPU time (torch.profiler).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import transformers.integrations.sdpa_attention as hf_sdpa
from transformers.cache_utils import Cache, StaticLayer

from common import add_threads_option, load_average, load_eval_model, machine_record
from igpo.agent.engine import _GrowingLayer, cache_kwarg
from igpo.config import ModelConfig
from igpo.data.loaders import load_corpus

ARMS = ("grow_eager", "grow_compiled", "static_eager", "static_compiled", "static_frozen")
COMPILED = {"grow_compiled", "static_compiled", "static_frozen"}


def pack_gqa_when_compiled() -> None:
    """Under dynamo, transformers' sdpa attention repeats the 3 key/value heads to 9 for a one-id query
    (`repeat_kv`: a copy of every layer's whole cache at every step) where eagerly it regroups the query
    (`pack_gqa`); this makes the compiled step regroup the query too (the name is only read on that branch)."""
    hf_sdpa.is_torchdynamo_compiling = lambda: False


def context_ids(tok, corpus: str, batch: int, n: int) -> torch.Tensor:
    """[batch, n] ids: row i is the tokens of consecutive corpus passages (wrapping around) from passage i * gap on,
    cut at n; gap is 50, or less where the corpus has fewer than 50 passages a row."""
    passages = load_corpus(corpus)
    gap = max(1, min(50, len(passages) // batch))
    rows = []
    for i in range(batch):
        ids: list[int] = []
        j = i * gap
        while len(ids) < n:
            ids += tok(passages[j % len(passages)].text + "\n", add_special_tokens=False)["input_ids"]
            j += 1
        rows.append(ids[:n])
    return torch.tensor(rows)


class Arm:
    """One way to run decoding steps: `start` prefills a batch, `step` feeds one id a row and returns the logits
    [B, vocab] of the next token."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name
        self.kw = cache_kwarg(model)
        self.layers = model.config.num_hidden_layers
        self.forward = model.forward
        if name == "grow_compiled":
            self.forward = torch.compile(model.forward, dynamic=True)
        self.static_step = self._static_step
        if name in ("static_compiled", "static_frozen"):
            options = {"freezing": True} if name == "static_frozen" else None
            self.static_step = torch.compile(self._static_step, dynamic=False, options=options)

    def start(self, ctx: torch.Tensor, capacity: int) -> None:
        B, n = ctx.shape
        grow = Cache(layers=[_GrowingLayer(capacity) for _ in range(self.layers)])
        out = self.model(input_ids=ctx, use_cache=True, logits_to_keep=1, **{self.kw: grow})
        self.first_logits = out.logits[:, -1].float()
        if self.name.startswith("grow"):
            self.cache, self.mask = grow, torch.ones((B, n), dtype=torch.long)
        else:
            layers = []
            for gl in grow.layers:
                sl = StaticLayer(capacity)
                sl.lazy_initialization(gl.keys, gl.values)
                sl.keys[:, :, :n], sl.values[:, :, :n] = gl.keys, gl.values
                sl.cumulative_length.fill_(n)
                layers.append(sl)
            self.cache = Cache(layers=layers)
            self.mask = torch.zeros((B, 1, 1, capacity), dtype=torch.bool)
            self.mask[..., :n] = True
        self.n = n
        self.positions = torch.full((B, 1), n, dtype=torch.long)

    def _static_step(self, ids, mask, positions, cache):
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.kw: cache},
        )
        return out.logits[:, -1].float()

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        if self.name.startswith("grow"):
            self.mask = torch.cat([self.mask, self.mask.new_ones((len(ids), 1))], dim=1)
            out = self.forward(
                input_ids=ids,
                attention_mask=self.mask,
                position_ids=self.positions,
                use_cache=True,
                logits_to_keep=1,
                **{self.kw: self.cache},
            )
            logits = out.logits[:, -1].float()
        else:
            self.mask[..., self.n] = True
            logits = self.static_step(ids, self.mask, self.positions, self.cache)
        self.n += 1
        self.positions = self.positions + 1
        return logits


def run(arm: Arm, ctx: torch.Tensor, warmup: int, steps: int) -> dict:
    """Greedy decoding of warmup + steps steps; the seconds of the first step and per timed step, tokens, logits."""
    arm.start(ctx, ctx.shape[1] + warmup + steps + 1)
    logits = arm.first_logits
    tokens, all_logits, first_s, t0 = [], [], 0.0, 0.0
    for s in range(warmup + steps):
        if s == warmup:
            t0 = time.perf_counter()
        t = time.perf_counter()
        ids = logits.argmax(-1)
        tokens.append(ids.tolist())
        logits = arm.step(ids[:, None])
        if s == 0:
            first_s = time.perf_counter() - t
        all_logits.append(logits)
    return {
        "first_step_s": first_s,
        "step_s": (time.perf_counter() - t0) / steps,
        "tokens": tokens,
        "logits": all_logits,
    }


def profile_steps(arm: Arm, ctx: torch.Tensor, steps: int, rows: int = 15) -> list[dict]:
    """The ops of `steps` decoding steps (after 3 unprofiled ones) by self CPU time: the top `rows`, each with its
    self CPU seconds a step, share of the profiled self CPU time and calls a step."""
    arm.start(ctx, ctx.shape[1] + steps + 4)
    logits = arm.first_logits
    for _ in range(3):
        logits = arm.step(logits.argmax(-1)[:, None])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            logits = arm.step(logits.argmax(-1)[:, None])
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {
            "op": e.key,
            "self_s_per_step": e.self_cpu_time_total / 1e6 / steps,
            "share": e.self_cpu_time_total / total,
            "calls_per_step": e.count / steps,
        }
        for e in events[:rows]
    ]


def compare(ref: dict, got: dict) -> dict:
    """Token agreement with the reference arm and max |logit diff| over the steps before the first difference."""
    same = 0
    for a, b in zip(ref["tokens"], got["tokens"]):
        if a != b:
            break
        same += 1
    diffs = [(a - b).abs().max().item() for a, b in zip(ref["logits"][:same], got["logits"][:same])]
    return {
        "identical_tokens": ref["tokens"] == got["tokens"],
        "steps_identical": same,
        "max_abs_logit_diff": max(diffs) if diffs else None,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/vitalfactbook/corpus.jsonl")
    ap.add_argument("--model", default=None, help="model.path (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--context", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="after the repeats, profile this many steps of each arm at each batch size (0: none)",
    )
    ap.add_argument("--repeat-kv", action="store_true", help="keep transformers' repeat_kv in compiled steps")
    add_threads_option(ap)
    args = ap.parse_args(argv)
    arms_named = [a.strip() for a in args.arms.split(",")]
    if "grow_eager" not in arms_named or set(arms_named) - set(ARMS):
        raise SystemExit(f"--arms {args.arms}: choose from {', '.join(ARMS)}, grow_eager among them")
    batches = [int(b) for b in args.batches.split(",")]
    if not args.repeat_kv and set(arms_named) & COMPILED:
        pack_gqa_when_compiled()
    # Each compiled arm x batch size is one more entry of `_static_step`'s cache (the default limit is 8).
    torch._dynamo.config.recompile_limit = 64
    model, tok = load_eval_model(args, ModelConfig(path=args.model) if args.model else None)
    ctxs = {b: context_ids(tok, args.corpus, b, args.context) for b in batches}
    arms = {name: Arm(model, name) for name in arms_named}
    record = {"machine": machine_record(), "args": {k: str(v) for k, v in vars(args).items()}, "repeats": []}
    with torch.no_grad():
        for r in range(args.repeats):
            rep = {"load_average": load_average(), "runs": {}}
            for b in batches:
                ref = None
                for name, arm in arms.items():
                    res = run(arm, ctxs[b], args.warmup, args.steps)
                    ref = res if name == "grow_eager" else ref
                    row = {"step_s": res["step_s"], "first_step_s": res["first_step_s"]}
                    if ref is not res:
                        row |= compare(ref, res)
                    rep["runs"][f"{name}/b{b}"] = row
                    print(r, b, name, json.dumps(row), flush=True)
            record["repeats"].append(rep)
            args.out.write_text(json.dumps(record, indent=1))
    if args.profile_steps:
        with torch.no_grad():
            record["profiles"] = {
                f"{name}/b{b}": profile_steps(arm, ctxs[b], args.profile_steps)
                for b in batches
                for name, arm in arms.items()
            }
        for key, rows in record["profiles"].items():
            print(key)
            for e in rows:
                print(
                    f"  {e['op'][:60]:60s} {e['self_s_per_step'] * 1e3:7.2f} ms/step {e['share']:6.1%} "
                    f"{e['calls_per_step']:6.1f} calls/step"
                )
    ratios = {}
    for key in record["repeats"][0]["runs"] if record["repeats"] else []:
        name, b = key.split("/")
        per = [rep["runs"][f"grow_eager/{b}"]["step_s"] / rep["runs"][key]["step_s"] for rep in record["repeats"]]
        ratios[key] = {
            "median_speedup_vs_grow_eager": statistics.median(per),
            "per_repeat": per,
            "median_step_s": statistics.median(rep["runs"][key]["step_s"] for rep in record["repeats"]),
        }
    record["summary"] = ratios
    args.out.write_text(json.dumps(record, indent=1))
    for k, v in ratios.items():
        print(f"{k:24s} step {v['median_step_s'] * 1e3:7.1f} ms  x{v['median_speedup_vs_grow_eager']:.2f}")
    return record


if __name__ == "__main__":
    main()
