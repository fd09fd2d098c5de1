"""One training step, ours vs TRL's GRPOTrainer, on the same single-turn work (no tools), CPU.

Same model (SmolLM2-135M-Instruct, fp32), same prompts (our prompt ids; TRL gets their text and the run asserts
it tokenizes it to the same ids), same reward (answer F1, format penalty −2), G rollouts per question, max new
tokens, temperature 1 / top-p 1 / no top-k, micro-batch, AdamW (fused), learning rate, grad clip 1, KL coefficient,
seq-mean-token-mean loss (TRL `loss_type="grpo"`), no gradient checkpointing, one optimizer step per batch.

Each implementation runs in its own process (so that the peak RSS is its own), `--rounds` times, alternating
who goes first; each process does `--warmup` steps that are not counted, then `--steps` timed steps. Reported:
median step time per phase and for the whole step (with min / max / quartiles over all timed steps), generated
tokens, peak RSS, the machine (CPU model, flags, torch's CPU capability, threads) and the load average at each step.

    python benchmarks/train_step.py --out benchmarks/results/train_step.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import add_threads_option, apply_threads, load_average, machine_record, summaries, summarize

SYSTEM = "Answer the question with a short answer, written as <answer>answer</answer>."


def _our_config(args, qa: Path, out: Path):
    from igpo.config import load_config

    return load_config(
        None,
        [
            f"data.train={qa}",
            f"trainer.out_dir={out}",
            f"rollout.system_prompt={json.dumps(SYSTEM)}",
            "rollout.max_turns=1",
            f"rollout.group_size={args.group}",
            f"rollout.questions_per_step={args.questions}",
            f"rollout.max_new_tokens={args.max_new_tokens}",
            "rollout.temperature=1.0",
            "rollout.top_p=1.0",
            "algorithm.estimator=grpo",
            f"algorithm.kl_coef={args.beta}",
            f"trainer.lr={args.lr}",
            f"trainer.micro_batch_size={args.micro_batch}",
            "trainer.mini_batches=1",
            "trainer.ppo_epochs=1",
            f"trainer.seed={args.seed}",
            "trainer.save_every=0",
        ],
    )


def run_ours(args) -> dict:
    import torch

    from igpo.agent.tools import Toolbox
    from igpo.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(_our_config(args, args.qa, Path(tmp) / "run"), toolbox=Toolbox([]))
        steps = []
        for _ in range(args.warmup + args.steps):
            load = load_average()
            t, c = time.perf_counter(), time.process_time()
            m = trainer.train_step()
            total = time.perf_counter() - t
            phases = dict(m["seconds"])
            phases["other"] = total - sum(phases.values())
            steps.append(
                {
                    "total": total,
                    "cpu_s": time.process_time() - c,
                    "phases": phases,
                    "generated_tokens": m["generated_tokens"],
                    "tokens": m["tokens"],
                    "load_avg": load,
                }
            )
        return {"steps": steps[args.warmup :], "threads": torch.get_num_threads()}


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from igpo.agent.parsing import parse_generation
    from igpo.agent.tools import Toolbox
    from igpo.algo.rewards import outcome_reward
    from igpo.config import ModelConfig
    from igpo.policy.loading import resolve_model_dir
    from igpo.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        # Our trainer only to get the exact questions of each step and their prompt ids.
        ours = Trainer(_our_config(args, args.qa, Path(tmp) / "ours"), toolbox=Toolbox([]))
        rows = []
        for step in range(args.warmup + args.steps):
            for ex in ours.batch_examples(step):
                ids = ours.fmt.prompt_ids(ex.question)
                rows.append({"prompt": ours.tok.decode(ids), "answers": ex.answers, "ids": ids})
        tok = ours.tok
        del ours
        for r in rows:
            assert tok(text=r["prompt"])["input_ids"] == r["ids"], "TRL would tokenize the prompt differently"

        def f1_reward(prompts, completions, answers, **_):
            return [
                outcome_reward(parse_generation(c).answer, a, -2.0, "official") for c, a in zip(completions, answers)
            ]

        per_step = args.questions * args.group
        cfg = GRPOConfig(
            output_dir=str(Path(tmp) / "trl"),
            use_cpu=True,
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            per_device_train_batch_size=args.micro_batch,
            gradient_accumulation_steps=per_step // args.micro_batch,
            num_generations=args.group,
            max_completion_length=args.max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            beta=args.beta,
            loss_type="grpo",
            learning_rate=args.lr,
            max_grad_norm=1.0,
            weight_decay=0.0,
            optim="adamw_torch_fused",
            lr_scheduler_type="constant",
            max_steps=args.warmup + args.steps,
            shuffle_dataset=False,
            seed=args.seed,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            dataloader_num_workers=0,
            model_init_kwargs={"dtype": "float32"},
        )
        data = Dataset.from_list([{"prompt": r["prompt"], "answers": r["answers"]} for r in rows])
        trainer = GRPOTrainer(
            model=resolve_model_dir(ModelConfig())[0],
            reward_funcs=f1_reward,
            args=cfg,
            train_dataset=data,
            processing_class=tok,
        )
        clock: dict[str, float] = defaultdict(float)

        def timed(obj, name: str, phase):
            fn = getattr(obj, name)

            def wrapper(*a, **k):
                key = phase() if callable(phase) else phase
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    clock[key] += time.perf_counter() - t

            setattr(obj, name, wrapper)

        timed(trainer, "_generate_single_turn", "rollout")
        timed(trainer, "_calculate_rewards", "rewards")
        timed(
            trainer,
            "_get_per_token_logps_and_entropies",
            lambda: "ref_logprobs" if not torch.is_grad_enabled() else "update_forward",
        )
        timed(trainer, "_generate_and_score_completions", "generate_and_score")
        steps = []

        class StepTimer(TrainerCallback):
            def on_step_begin(self, *_, **__):
                clock.clear()
                self.load = load_average()
                self.t, self.c = time.perf_counter(), time.process_time()

            def on_step_end(self, *_, **__):
                total = time.perf_counter() - self.t
                c = dict(clock)
                scored = c.pop("generate_and_score", 0.0)
                phases = {k: c.get(k, 0.0) for k in ("rollout", "ref_logprobs")}
                phases["update"] = total - scored  # forward + backward of every micro-batch, optimizer step
                phases["other"] = scored - phases["rollout"] - phases["ref_logprobs"]  # rewards, advantages, padding
                gen = trainer._metrics["train"]["completions/mean_length"][-1] * per_step
                steps.append(
                    {
                        "total": total,
                        "cpu_s": time.process_time() - self.c,
                        "phases": phases,
                        "generated_tokens": gen,
                        "update_forward_s": c.get("update_forward", 0.0),
                        "load_avg": self.load,
                    }
                )

        trainer.add_callback(StepTimer())
        trainer.train()
        return {"steps": steps[args.warmup :], "threads": torch.get_num_threads()}


def child(args) -> None:
    apply_threads(args)
    out = run_ours(args) if args.child == "ours" else run_trl(args)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qa", type=Path, default=Path("data/vitalfactbook/train.jsonl"))
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--beta", type=float, default=0.001, help="KL coefficient (ours: algorithm.kl_coef)")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    add_threads_option(ap)
    ap.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train_step.json"))
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    apply_threads(args)
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    loads = []
    for r in range(args.rounds):
        for name in ["ours", "trl"] if r % 2 == 0 else ["trl", "ours"]:
            loads.append({"round": r, "implementation": name, "load_avg": load_average()})
            cmd = [sys.executable, __file__, "--child", name, *sys.argv[1:]]
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
            runs[name].append(json.loads(line[len("RESULT ") :]))
            print(name, "round", r, [round(s["total"], 2) for s in runs[name][-1]["steps"]], flush=True)

    summary = {}
    for name, rs in runs.items():
        steps = [s for r in rs for s in r["steps"]]
        phases = sorted({k for s in steps for k in s["phases"]})
        summary[name] = {
            "median_step_s": statistics.median(s["total"] for s in steps),
            "median_step_cpu_s": statistics.median(s["cpu_s"] for s in steps),
            "median_phase_s": {k: statistics.median(s["phases"].get(k, 0.0) for s in steps) for k in phases},
            "step_s_summary": summarize([s["total"] for s in steps]),
            "phase_s_summary": summaries({k: [s["phases"].get(k, 0.0) for s in steps] for k in phases}),
            "median_generated_tokens": statistics.median(s["generated_tokens"] for s in steps),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "steps": steps,
        }
    result = {
        "model": "SmolLM2-135M-Instruct",
        "device": "cpu",
        "threads": {n: rs[0]["threads"] for n, rs in runs.items()},
        "machine": machine_record(),
        "load_avg_at_start": loads,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "child"},
        **summary,
        "step_ratio_ours_over_trl": summary["ours"]["median_step_s"] / summary["trl"]["median_step_s"],
    }
    print(
        json.dumps(
            {k: result[k] for k in ("step_ratio_ours_over_trl",)}
            | {n: {k: summary[n][k] for k in ("median_step_s", "median_phase_s", "peak_rss_mb")} for n in runs}
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
