"""The IGPO training loop.

One step: questions → rollout (G per question) → beliefs p_0..p_{T−1} → turn rewards (IG, outcome) →
turn advantages → token advantages → PPO update. Each phase is timed; metrics go to `metrics.jsonl`.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import random
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from igpo.agent.build import make_chat_format, make_generator, make_toolbox
from igpo.agent.generators import ContinuationScorer, Generator, OwnWeightsGenerator, SamplingParams
from igpo.agent.rollout import rollout
from igpo.agent.tools import MALFORMED_CALL_ERRORS, SearchTool, Toolbox
from igpo.agent.trajectory import Trajectory
from igpo.algo.advantages import ESTIMATORS, StepInputs, compute_turn_advantages, turn_to_token_advantages
from igpo.algo.loss import agg_loss, kl_penalty, ppo_policy_loss, tis_weights
from igpo.algo.rewards import IGGate, information_gain, outcome_reward, reduce_aliases, shape_ig
from igpo.config import Config, ConfigError, dump_config
from igpo.data.loaders import QAExample, load_qa
from igpo.files import atomic_write_text
from igpo.policy.loading import is_lora, load_policy
from igpo.policy.scoring import (
    BeliefQuery,
    belief_logprobs_cached,
    belief_logprobs_engine,
    belief_logprobs_packed,
    belief_logprobs_reference,
    compare_beliefs,
    token_logprobs,
)
from igpo.policy.vllm_engine import DEFAULT_BELIEF_TOLERANCE
from igpo.report.records import sample_records
from igpo.report.runlog import RunLog
from igpo.retrieval.base import Retriever
from igpo.seeding import episode_seed, step_seed
from igpo.train import checkpoint as ckpt
from igpo.train import distributed, faults, metrics
from igpo.train.batching import collate
from igpo.train.invariants import check_batch_tokens, check_ig_telescopes, check_no_probe_leak

log = logging.getLogger(__name__)


class Timer:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t
        faults.kill_point(phase)


class Trainer:
    """Holds the policy, the reference, the optimizer and the run folder; `fit()` runs `trainer.steps` steps."""

    def __init__(
        self,
        cfg: Config,
        model=None,
        tokenizer=None,
        toolbox: Toolbox | None = None,
        train_set: list[QAExample] | None = None,
        generator: Generator | None = None,
    ):
        self.dist, cfg = distributed.setup(cfg)
        self.cfg = cfg
        self.out = Path(cfg.trainer.out_dir)
        torch.manual_seed(cfg.trainer.seed)
        # Rank 0 looks first: it moves a corrupt checkpoint aside, then the others find the same good one.
        resume = ckpt.latest_checkpoint(self.out) if self.dist.is_main else None
        self.dist.barrier()
        if not self.dist.is_main:
            resume = ckpt.latest_checkpoint(self.out)
        if model is None:
            model, tokenizer = load_policy(cfg.model)
        self.model, self.tok = model, tokenizer
        self.toolbox = toolbox or make_toolbox(cfg)
        self.fmt = make_chat_format(cfg, tokenizer, self.toolbox)
        if (fixed := len(self.fmt.prompt_ids(""))) >= cfg.rollout.max_context:
            raise ConfigError(
                f"rollout.max_context: {cfg.rollout.max_context} tokens cannot hold the prompt, whose "
                f"system part and tool schemas alone take {fixed}"
            )
        if cfg.trainer.autocast is not None and self.dist.enabled:
            raise ConfigError(
                "trainer.autocast: single process only (with several processes, FSDP's trainer.fsdp_param_dtype is "
                "the mixed-precision setting)"
            )
        self._own_generator = generator is None  # `close()` closes the one it built, not one it was given
        self.generator = generator or make_generator(cfg, model, tokenizer.pad_token_id, self.dist.enabled)
        self._pushed_step = -1  # the step whose weights the generator holds, when it keeps its own copy
        if cfg.algorithm.belief_backend == "engine" and not isinstance(self.generator, ContinuationScorer):
            raise ConfigError(
                "algorithm.belief_backend: engine needs a rollout engine that scores continuations "
                f"(rollout.backend: vllm); the generator {type(self.generator).__name__} does not"
            )
        self.train_set = train_set if train_set is not None else self._load_train()
        # The reference is the initial policy: copied before any checkpoint weights are loaded.
        self.ref = self._make_reference() if cfg.algorithm.kl_coef > 0 else None
        if resume is not None:
            self._load_weights(resume[0])
        # The forward that trains goes through DDP's wrapper; FSDP shards `model` in place.
        self.train_model = self.dist.wrap(model, cfg.trainer.fsdp_param_dtype)
        self.dist.shard_frozen(self.ref, cfg.trainer.fsdp_param_dtype)
        params = [p for p in model.parameters() if p.requires_grad]
        # The fused kernel (CPU and CUDA) updates all parameters in one pass instead of a loop of small ops.
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay, fused=fused or None
        )
        warm = cfg.trainer.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
        )
        self.step = 0
        self.bad_steps = faults.BadStepGuard(cfg.trainer.max_bad_steps)
        self.estimator = ESTIMATORS[cfg.algorithm.estimator]
        self.ig_gate = IGGate(cfg.algorithm.ig_gate_threshold, cfg.algorithm.ig_gate_ema)
        self.retrieval_counts = metrics.PerStepCounts()
        self._eval_set: list[QAExample] | None = None
        if cfg.trainer.eval_every and cfg.data.eval:  # a bad eval file fails now, not steps into the run
            self._eval_set = load_qa(cfg.data.eval, skip_bad_rows=cfg.data.skip_bad_rows)[: cfg.trainer.eval_size]
        # The wandb run continues across resumes: its id is kept in each checkpoint.
        self.wandb_run_id = None
        if "wandb" in cfg.trainer.loggers:
            if importlib.util.find_spec("wandb") is None:
                raise ConfigError(
                    "trainer.loggers: wandb is not installed (pip install -c constraints.txt 'igpo[wandb]')"
                )
            self.wandb_run_id = (resume[1].get("wandb_run_id") if resume else None) or secrets.token_hex(4)
        if resume is not None:
            state = resume[1]
            self.dist.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            ckpt.restore_rng(state)
            self.step = state["step"]
            self.bad_steps.in_a_row = state.get("bad_steps_in_a_row", 0)
            if "ig_gate" in state:
                self.ig_gate.load_state_dict(state["ig_gate"])
            ckpt.check_resume_state(state, cfg.rollout.questions_per_step, self._retriever())
            log.info("resumed from %s (step %d)", resume[0], self.step)

    # ------------------------------------------------------------------ setup
    def _push_weights(self, timer: Timer | None = None) -> None:
        """Hands the current weights to a generator that holds its own copy (vLLM), once per update."""
        if isinstance(self.generator, OwnWeightsGenerator) and self._pushed_step != self.step:
            with (timer or Timer())("weight_push"):
                self.generator.push_weights(self.dist.full_parameters(self.model), self.model, self.step)
            self._pushed_step = self.step

    def _generation_weights(self):
        """Whole weights for the generator when it samples from the trainer's model (FSDP gathers them)."""
        if isinstance(self.generator, OwnWeightsGenerator):  # it holds its own copy
            return nullcontext()
        return self.dist.gathered(self.model)

    def _load_train(self) -> list[QAExample]:
        if not self.cfg.data.train:
            raise ConfigError("data.train: a QA file is required for training")
        return load_qa(self.cfg.data.train, skip_bad_rows=self.cfg.data.skip_bad_rows)

    def _load_weights(self, path: Path) -> None:
        """Weights of a checkpoint into the live model (full state dict or LoRA adapter)."""
        if is_lora(self.model):
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights

            set_peft_model_state_dict(self.model, load_peft_weights(str(path)))
            return
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=next(self.model.parameters()).dtype)
        self.model.load_state_dict(loaded.state_dict())

    def _retriever(self) -> Retriever | None:
        tool = self.toolbox.tools.get("search")
        return tool.retriever if isinstance(tool, SearchTool) else None

    def _make_reference(self):
        if is_lora(self.model):
            return None  # LoRA: the reference is the base model with the adapter switched off
        ref = copy.deepcopy(self.model)
        ref.eval().requires_grad_(False)
        return ref

    def _autocast(self):
        """The block's forwards in `trainer.autocast`'s dtype (on the model's device type) from the fp32
        parameters; without it, nothing changes."""
        dtype = self.cfg.trainer.autocast
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=next(self.model.parameters()).device.type, dtype=getattr(torch, dtype))

    @contextmanager
    def _reference(self):
        if self.ref is not None:
            yield self.ref
        else:
            with self.model.disable_adapter():
                yield self.model

    # ------------------------------------------------------------------ data
    def batch_examples(self, step: int) -> list[QAExample]:
        """The questions of a step: consecutive slices of per-epoch permutations (resumable from the step alone)."""
        q = self.cfg.rollout.questions_per_step
        n = len(self.train_set)
        out = []
        for k in range(step * q, (step + 1) * q):
            epoch, pos = divmod(k, n)
            perm = np.random.default_rng([self.cfg.trainer.seed, epoch]).permutation(n)
            out.append(self.train_set[int(perm[pos])])
        return out

    # ------------------------------------------------------------------ phases
    def collect(self, step: int, timer: Timer) -> list[Trajectory]:
        """This rank's episodes of step `step`. The generator keeps the rollout's KV caches (the beliefs are scored
        against them) until `self.generator.release()`, which `train_step` calls after the beliefs."""
        g = self.cfg.rollout.group_size
        questions = self.batch_examples(step)
        mine = self.dist.shard(len(questions))  # this rank's questions, each with all its G rollouts
        examples = [questions[j] for j in mine for _ in range(g)]
        groups = [step * len(questions) + j for j in mine for _ in range(g)]
        seeds = [episode_seed(self.cfg.trainer.seed, step, j, k) for j in mine for k in range(g)]
        seed = step_seed(self.cfg.trainer.seed, step)
        torch.manual_seed(seed)
        random.seed(seed)
        r = self.cfg.rollout
        self._push_weights(timer)
        with timer("rollout"), self._generation_weights(), self._autocast():
            return rollout(
                examples,
                groups,
                self.generator,
                self.fmt,
                self.toolbox,
                SamplingParams(r.max_new_tokens, r.temperature, r.top_p),
                r.max_turns,
                r.max_context,
                seeds=seeds,
                release=False,
            )

    def answer_ids(self, ex: QAExample) -> list[list[int]]:
        a = self.cfg.algorithm
        answers = ex.answers[:1] if a.aliases == "first" else ex.answers[: a.max_aliases]
        return [self.fmt.answer_ids(x) for x in answers]

    def score_beliefs(self, trajs: list[Trajectory], timer: Timer) -> dict[str, float]:
        """Sets `traj.beliefs` to the mean answer log-probs after the prompt and after each non-final turn.

        `algorithm.belief_backend: engine`: the rollout engine scores them (the weights it sampled this step's
        rollout with), and on every `algorithm.belief_check_every`-th step the trainer scores them too (`packed`,
        phase `belief_check`): `compare_beliefs`' metrics, or its `BeliefCheckError`.
        `algorithm.belief_impl: cache` scores them against the KV caches the generator still holds from this
        step's rollout (same weights: no update in between); a trajectory whose cache it does not hold is scored
        by `packed`. Returns `beliefs_from_cache_share` (the share of scored trajectories that used a cache) under
        `cache`, the cross-check's metrics on a checked step, else nothing.
        """
        todo, queries = self.belief_queries(trajs)
        if not todo:
            return {}
        a, probe, stats = self.cfg.algorithm, self.fmt.belief_probe_ids, {}
        if a.belief_backend == "engine":
            with timer("beliefs"):
                per_alias = belief_logprobs_engine(self.generator, probe, queries)
            if a.belief_check_every and self.step % a.belief_check_every == 0:
                with timer("belief_check"):
                    want = self.trainer_beliefs("packed", probe, queries, stats)
                    stats |= compare_beliefs(per_alias, want, self._belief_tolerance(), f"step {self.step}")
        else:
            with timer("beliefs"):
                per_alias = self.trainer_beliefs(a.belief_impl, probe, queries, stats)
        for tr, lp in zip(todo, per_alias):
            tr.beliefs = reduce_aliases(lp, a.aliases).tolist()
        return stats

    def belief_queries(self, trajs: list[Trajectory]) -> tuple[list[Trajectory], list[BeliefQuery]]:
        """The trajectories that have beliefs to score (two turns or more) and their `BeliefQuery`s."""
        todo = [tr for tr in trajs if tr.num_turns >= 2]
        return todo, [BeliefQuery(tr.ids, tr.belief_prefixes(), self.answer_ids(tr.example)) for tr in todo]

    def trainer_beliefs(self, impl: str, probe: list[int], queries: list[BeliefQuery], stats: dict) -> list:
        """Per query, [P, K] mean answer log-probs from the trainer's model by `impl` (`algorithm.belief_impl`);
        `cache` adds `beliefs_from_cache_share` to `stats`."""
        was_training = self.model.training
        self.model.eval()
        with self.dist.gathered(self.model), self._autocast():
            if impl == "cache":
                # Each prefix's last id is fed again, so the cache must cover ids[:max(prefixes) - 1].
                held = [self.generator.held_kv(q.ids, max(q.prefixes) - 1) for q in queries]
                per_alias = belief_logprobs_cached(self.model, probe, queries, held)
                stats["beliefs_from_cache_share"] = sum(kv is not None for kv in held) / max(len(held), 1)
            else:
                fn = belief_logprobs_packed if impl == "packed" else belief_logprobs_reference
                per_alias = fn(self.model, probe, queries)
        self.model.train(was_training)
        return per_alias

    def _belief_tolerance(self) -> float:
        """The cross-check's tolerance: `algorithm.belief_check_tolerance`, or by the less precise dtype of the
        engine and the trainer's forwards (`trainer.autocast`, else the model's; `DEFAULT_BELIEF_TOLERANCE`)."""
        if (tol := self.cfg.algorithm.belief_check_tolerance) is not None:
            return tol
        autocast = self.cfg.trainer.autocast
        trainer = getattr(torch, autocast) if autocast is not None else next(self.model.parameters()).dtype
        return max(DEFAULT_BELIEF_TOLERANCE[d] for d in (self.generator.score_dtype, trainer))

    def turn_rewards(self, trajs: list[Trajectory]) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """turn rewards [B, T], turn mask [B, T], outcome per rollout."""
        a = self.cfg.algorithm
        T = max(1, max(tr.num_turns for tr in trajs))
        rewards = torch.zeros(len(trajs), T)
        mask = torch.zeros(len(trajs), T, dtype=torch.bool)
        outcomes = []
        for b, tr in enumerate(trajs):
            n = tr.num_turns
            if n == 0:
                # The prompt alone filled rollout.max_context: no answer, so the format penalty as outcome, but no
                # turn to carry it and no token to train on. (All rollouts of a question share its prompt, so
                # the whole group is like this: no advantage, and none taken from another group.)
                outcomes.append(outcome_reward(None, tr.example.answers, a.format_penalty, a.answer_norm))
                continue
            mask[b, :n] = True
            if tr.beliefs is not None:
                lp = torch.tensor(tr.beliefs)
                ig = information_gain(lp, a.ig)
                if self.cfg.trainer.check_invariants:
                    check_ig_telescopes(lp, ig, a.ig, f"rollout {b}")
                malformed = [t.tool_error in MALFORMED_CALL_ERRORS for t in tr.turns[: n - 1]]
                rewards[b, : n - 1] = shape_ig(ig, a.ig_clip, malformed, a.turn_format_penalty)
            o = outcome_reward(tr.answer, tr.example.answers, a.format_penalty, a.answer_norm)
            rewards[b, n - 1] = o
            outcomes.append(o)
        return rewards, mask, outcomes

    def batch_tensors(self, trajs: list[Trajectory]) -> dict[str, torch.Tensor]:
        return collate(trajs, self.tok.pad_token_id)

    def _forward_logprobs(self, model, batch, rows, shared_prefix: bool, with_entropy=False, entropy_grad=False):
        dev = next(self.model.parameters()).device
        length = int(batch["attn"][rows].sum(1).max())
        ids = batch["ids"][rows, :length].to(dev)
        attn = batch["attn"][rows, :length].to(dev)
        # Only the policy's own tokens enter a loss: tool results and the prompt are never put through the LM head.
        score = batch["loss_mask"][rows, :length].to(dev) if self.cfg.trainer.score_generated_only else None
        start = int(batch["prompt_len"][rows].min())
        # Greedy rollouts (temperature 0) have no tempered distribution: score them at temperature 1.
        temperature = self.cfg.rollout.temperature or 1.0
        # Log-softmax and log-probs come out fp32 under autocast too (`token_logprobs`); the losses after are fp32.
        with self._autocast():
            return token_logprobs(
                model,
                ids,
                attn,
                start=start,
                with_entropy=with_entropy,
                entropy_grad=entropy_grad,
                temperature=temperature,
                score_mask=score,
                shared_prefix=shared_prefix,
            )

    def _micro_batches(self, batch, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`rows` split into micro-batches of rows of similar length: less padding, and the sums over
        micro-batches (gradients, losses) do not depend on the order."""
        lengths = batch["attn"][rows].sum(1)
        return rows[lengths.argsort(descending=True, stable=True)].split(self.cfg.trainer.micro_batch_size)

    @torch.no_grad()
    def _logprobs_all(self, model, batch) -> torch.Tensor:
        B, L = batch["ids"].shape
        out = torch.zeros(B, L)
        # Under FSDP every forward is a collective, and whether a micro-batch's rows share a prefix long enough to
        # run it apart differs between ranks: they would run different numbers of forwards. DDP's scoring passes
        # run on the bare model, each rank on its own.
        shared = self.cfg.trainer.shared_prefix and not self.dist.fsdp
        for rows in self._micro_batches(batch, torch.arange(B)):
            lp, _ = self._forward_logprobs(model, batch, rows, shared)
            out[rows, : lp.shape[1]] = lp.float().cpu()
        return out

    def _micro_batch_loss(self, batch, rows, on_policy: bool, agg: dict, stats: dict[str, list[float]]) -> torch.Tensor:
        """The loss of a micro-batch's rows, aggregated against the whole (global) mini-batch (`agg`)."""
        a = self.cfg.algorithm
        dev = next(self.model.parameters()).device
        # Not with several processes: DDP's wrapper expects one forward per backward (and its forward does not
        # name the cache argument), and FSDP's ranks must run the same forwards (see `_logprobs_all`).
        shared = self.cfg.trainer.shared_prefix and not self.dist.enabled
        lp, ent = self._forward_logprobs(
            self.train_model, batch, rows, shared, with_entropy=True, entropy_grad=a.entropy_coef != 0
        )
        length = lp.shape[1]
        mask = batch["loss_mask"][rows, :length].to(dev)
        adv = batch["adv"][rows, :length].to(dev)
        old = lp.detach() if on_policy else batch["old_lp"][rows, :length].to(dev)
        pg, clipped = ppo_policy_loss(lp, old, adv, a.clip_eps, a.dual_clip)
        # Means over this micro-batch's tokens; one without any (its episodes had no turn) has none to report.
        generated = bool(mask.any())
        if "rollout_lp" in batch:  # the engine's sampling log-probs (vLLM)
            rollout_lp = batch["rollout_lp"][rows, :length].to(dev)
            n = mask.sum().clamp(min=1)
            if generated:
                stats["rollout_lp_abs_diff"].append(float(((old - rollout_lp).abs() * mask).sum() / n))
            if a.tis_cap is not None:
                w = tis_weights(old, rollout_lp, a.tis_cap)
                pg = pg * w
                if generated:
                    stats["tis_weight"].append(float((w * mask).sum() / n))
        elif a.tis_cap is not None and generated:
            raise ConfigError(
                "algorithm.tis_cap: the rollout backend recorded no sampling log-probs "
                "(rollout.backend=vllm records them)"
            )
        loss = agg_loss(pg, mask, **agg)
        stats["pg_loss"].append(float(loss.detach()))
        if a.kl_coef > 0:
            kl = kl_penalty(lp, batch["ref_lp"][rows, :length].to(dev), a.kl_type)
            kl_term = agg_loss(kl, mask, **agg)
            loss = loss + a.kl_coef * kl_term
            stats["kl"].append(float(kl_term.detach()))
        ent_term = agg_loss(ent, mask, **agg)
        if a.entropy_coef != 0:
            loss = loss - a.entropy_coef * ent_term
        stats["entropy"].append(float(ent_term.detach()))
        if generated:
            stats["clip_frac"].append(float((clipped * mask).sum() / mask.sum().clamp(min=1)))
        return loss

    def update(self, batch: dict[str, torch.Tensor], timer: Timer) -> dict[str, float]:
        a, t = self.cfg.algorithm, self.cfg.trainer
        B = batch["ids"].shape[0]
        on_policy = t.ppo_epochs == 1 and t.mini_batches == 1
        self.model.eval()  # scoring passes: no dropout
        if not on_policy:
            with timer("old_logprobs"):
                batch["old_lp"] = self._logprobs_all(self.model, batch)
        if a.kl_coef > 0:
            with timer("ref_logprobs"), self._reference() as ref:
                batch["ref_lp"] = self._logprobs_all(ref, batch)
        self.model.train()
        stats: dict[str, list[float]] = defaultdict(list)
        with timer("update"):
            for epoch in range(t.ppo_epochs):
                perm = torch.randperm(B, generator=torch.Generator().manual_seed(step_seed(t.seed, self.step) + epoch))
                for mini in perm.chunk(t.mini_batches):
                    mask_all = batch["loss_mask"][mini]
                    # Normalisers of the global mini-batch: the sum over ranks of their shares.
                    n_seqs, n_tokens = self.dist.all_sum([float((mask_all.sum(1) > 0).sum()), float(mask_all.sum())])
                    n_seqs, n_tokens = max(n_seqs, 1.0), max(n_tokens, 1.0)
                    self.optimizer.zero_grad(set_to_none=True)
                    micro = self._micro_batches(batch, mini)
                    agg = {"mode": a.loss_agg, "num_seqs": n_seqs, "num_tokens": n_tokens}
                    bad_loss = None
                    for i, rows in enumerate(micro):
                        with self.dist.grad_sync(self.train_model, sync=i == len(micro) - 1):
                            loss = self._micro_batch_loss(batch, rows, on_policy, agg, stats)
                            if bad_loss is None:
                                bad_loss = faults.finite_or_fault(loss.detach(), self.step, "loss", "loss")
                            # backward even so: under DDP/FSDP every rank must join the gradient reduction
                            (loss * self.dist.grad_scale).backward()
                    faults.agree(bad_loss, self.step, self.dist.all_sum)
                    grad_norm = self.dist.clip_grad_norm(
                        [p for p in self.model.parameters() if p.requires_grad], t.grad_clip
                    )
                    faults.require_finite(grad_norm, self.step, "gradients", "gradient norm")
                    self.optimizer.step()
                    self.scheduler.step()
                    stats["grad_norm"].append(float(grad_norm))
        return metrics.update_losses(stats, t.ppo_epochs * t.mini_batches)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        """One step: the rollout (`collect`), then `learn` on its trajectories; the step's metrics row."""
        timer = Timer()
        try:
            trajs = self.collect(self.step, timer)
        except BaseException:
            self.generator.release()  # the caches of a rollout cut short
            raise
        return self.learn(trajs, timer)

    def learn(self, trajs: list[Trajectory], timer: Timer, release: bool = True) -> dict:
        """The step after the rollout, on `trajs` (this step's, from `collect`): beliefs, turn rewards, advantages,
        the update; advances `self.step` and returns the step's metrics row. Sets each trajectory's `beliefs`.
        `release`: the generator drops the rollout's KV caches once the beliefs are scored (`benchmarks/step.py`
        keeps them, to run `learn` on the same trajectories under each configuration it compares)."""
        a = self.cfg.algorithm
        step = self.step
        # Beliefs only where IG is used and the warm-up gate (decided by the steps before this one) is open.
        ig_on = self.estimator.uses_ig and self.ig_gate.on()
        belief_stats = {}
        try:
            if ig_on:
                belief_stats = self.score_beliefs(trajs, timer)
        finally:
            if release:
                self.generator.release()  # the rollout's caches: the beliefs were their last reader
        if ig_on:
            # Without beliefs no probe is ever built: there is nothing that could leak.
            if self.cfg.trainer.check_invariants:
                for b, tr in enumerate(trajs):
                    check_no_probe_leak(
                        tr,
                        self.tok,
                        a.belief_probe,
                        self.fmt.belief_probe_ids,
                        self.answer_ids(tr.example),
                        f"step {step}, rollout {b}",
                    )
        # Nothing below is collective until `faults.agree`: a rank that finds a NaN goes straight there, and
        # every rank skips the step if any rank found one.
        fault = faults.finite_or_fault([p for tr in trajs for p in tr.beliefs or []], step, "beliefs", "beliefs")
        if fault is None:
            rewards, turn_mask, outcomes = self.turn_rewards(trajs)
            groups = [tr.group for tr in trajs]
            inputs = StepInputs(
                turn_tokens=self.turn_tokens(trajs, turn_mask.shape[1]), ig_on=ig_on, all_sum=self.dist.all_sum
            )
            turn_adv = compute_turn_advantages(
                rewards,
                turn_mask,
                groups,
                a.estimator,
                gamma=a.gamma,
                norm=a.norm,
                std=a.std,
                inputs=inputs,
                **self.estimator_options(step),
            )
            fault = faults.finite_or_fault(
                rewards[turn_mask], step, "rewards", "turn rewards"
            ) or faults.finite_or_fault(turn_adv[turn_mask], step, "advantages", "advantages")
        faults.agree(fault, step, self.dist.all_sum)
        f1_sum, n_rollouts = self.dist.all_sum([sum(metrics.f1(tr, a.answer_norm) for tr in trajs), float(len(trajs))])
        self.ig_gate.observe(f1_sum / max(n_rollouts, 1.0))
        batch = self.batch_tensors(trajs)
        batch["adv"] = turn_to_token_advantages(turn_adv, batch["turns"], batch["loss_mask"])
        if self.cfg.trainer.check_invariants:
            check_batch_tokens(trajs, batch["ids"], batch["loss_mask"])
        losses = {**self.update(batch, timer), **inputs.stats, **belief_stats}
        self.step += 1
        res = metrics.StepResult(trajs, rewards, turn_mask, outcomes, turn_adv, losses, dict(timer.seconds))
        if self.dist.enabled:  # rank 0 reports the whole step
            res = distributed.gather_step(self.dist, res)
            if res is None:
                self.samples = []
                return {"step": step}
        self.samples = sample_records(
            res.trajs, res.rewards, res.turn_adv, res.outcomes, step, self.cfg.trainer.log_samples, a.answer_norm
        )
        return self._metrics(step, res)

    def estimator_options(self, step: int) -> dict:
        """The options the chosen estimator reads, from the config (and the step, for a schedule)."""
        a = self.cfg.algorithm
        return {k: step if k == "step" else getattr(a, k) for k in self.estimator.options}

    @staticmethod
    def turn_tokens(trajs: list[Trajectory], T: int) -> torch.Tensor:
        """[B, T] tokens the policy generated in each turn."""
        out = torch.zeros(len(trajs), T, dtype=torch.long)
        for b, tr in enumerate(trajs):
            for k, t in enumerate(tr.turns):
                out[b, k] = t.gen_end - t.gen_start
        return out

    def _metrics(self, step: int, res: metrics.StepResult) -> dict:
        """The step's metrics.jsonl row (`metrics.step_metrics`), with this step's counts of the tools' counters."""
        retrieval = None
        for tool in self.toolbox.tools.values():
            if (s := tool.stats()) is not None:
                # this step's counts: rows stay the same across a resume, and sum to the totals
                retrieval = self.retrieval_counts(s)
        return metrics.step_metrics(
            step, res, self.cfg, self.scheduler.get_last_lr()[0], self.estimator.uses_ig, self.ig_gate, retrieval
        )

    # ------------------------------------------------------------------ loop
    def fit(
        self, progress: Callable[[dict], None] | None = None, eval_progress: Callable[[int, int], None] | None = None
    ) -> list[dict]:
        """Runs the remaining steps; returns the metric rows (on rank 0: the whole steps; elsewhere: steps only).

        On rank 0, `progress(row)` gets each step's metrics row and `eval_progress(done, total)` follows each
        evaluation (`trainer.eval_every`)."""
        t = self.cfg.trainer
        history = []
        with self._run_files() as (f, run_log):
            while self.step < t.steps:
                try:
                    m = self.train_step()
                    self.bad_steps.passed()
                except faults.NumericalFault as fault:  # no optimizer step from the faulty mini-batch on
                    m = self.bad_steps.skipped(fault)
                    self.samples = []
                    self.step += 1
                history.append(m)
                if f is not None:  # rank 0
                    f.write(json.dumps(m) + "\n")
                    f.flush()
                    faults.kill_point("metrics")
                    run_log.step(m, self.samples)
                    if progress is not None:
                        progress(m)
                self.bad_steps.check()  # skips are agreed by all ranks: every rank stops at the same step
                if t.eval_every and self.step % t.eval_every == 0 and self.cfg.data.eval:
                    row = self.evaluate_to_file(eval_progress)
                    if run_log is not None:
                        run_log.eval(row)
                if (t.save_every and self.step % t.save_every == 0) or self.step == t.steps:
                    self.save()
        return history

    @contextmanager
    def _run_files(self):
        """On rank 0: metrics.jsonl opened for appending and the `RunLog` (samples, TensorBoard, wandb), after writing
        config.yaml and dropping the rows of steps that run again. (None, None) on other ranks."""
        if not self.dist.is_main:
            yield None, None
            return
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "config.yaml", dump_config(self.cfg))
        # Rows after the checkpoint are written again. A metrics row's `step` is the index of its step (the
        # checkpoint after it holds step + 1); an eval row's `step` counts the steps before it, so the evaluation
        # of the checkpointed weights themselves (step == self.step) is kept: the resumed run does not redo it.
        ckpt.truncate_rows(self.out / "metrics.jsonl", self.step)
        ckpt.truncate_rows(self.out / "eval.jsonl", self.step + 1)
        t = self.cfg.trainer
        wandb = (self.wandb_run_id, t.wandb, self.cfg.model_dump(mode="json")) if self.wandb_run_id else None
        with (
            (self.out / "metrics.jsonl").open("a") as f,
            RunLog(self.out, self.step, "tensorboard" in t.loggers, wandb) as run_log,
        ):
            yield f, run_log

    def evaluate_to_file(self, progress: Callable[[int, int], None] | None = None) -> dict | None:
        """Greedy evaluation on the first `trainer.eval_size` questions of `data.eval`, appended to eval.jsonl.

        Rank 0 evaluates (every rank must call: FSDP gathers the weights); the row, or None on other ranks.
        `progress(done, total)` is called after each batch of questions.
        """
        if self.dist.is_main and self._eval_set is None:
            self._eval_set = load_qa(self.cfg.data.eval, skip_bad_rows=self.cfg.data.skip_bad_rows)[
                : self.cfg.trainer.eval_size
            ]
        row = None
        res = self.evaluate(self._eval_set, progress)
        if res is not None:
            row = {"step": self.step, "overall": res["overall"], "by_source": res["by_source"]}
            with (self.out / "eval.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
        self.dist.barrier()
        return row

    def evaluate(
        self, examples: list[QAExample] | None, progress: Callable[[int, int], None] | None = None
    ) -> dict | None:
        """`igpo.eval.evaluate.evaluate` of the current weights on `examples`: a generator with its own copy of
        the weights gets them first. Rank 0 evaluates (every rank must call: FSDP gathers the weights); its
        result, or None on other ranks. `progress(done, total)` is called after each batch of questions."""
        from igpo.eval.evaluate import evaluate

        self._push_weights()
        with self._generation_weights(), self._autocast():
            if not self.dist.is_main:
                return None
            return evaluate(self.generator, self.fmt, self.toolbox, examples, self.cfg, progress)

    def close(self) -> None:
        """Closes the generator the trainer built (a vLLM engine's memory is freed), after its last rollout or
        evaluation: a process that goes on (a learning benchmark's worker, which trains its next run) starts
        the next engine beside nothing. Under torchrun the process group goes with a vLLM engine: close last."""
        if self._own_generator:
            self.generator.close()

    def save(self) -> Path | None:
        """Writes a checkpoint from rank 0 (every rank must call: FSDP gathers the state); its path on rank 0."""
        model_state, optim_state = self.dist.full_state(self.model, self.optimizer)
        path = None
        if self.dist.is_main:
            q = self.cfg.rollout.questions_per_step
            extra = {
                "data": {"questions_per_step": q, "examples_seen": self.step * q},
                "bad_steps_in_a_row": self.bad_steps.in_a_row,
                "ig_gate": self.ig_gate.state_dict(),
                "wandb_run_id": self.wandb_run_id,
                "retrieval": ckpt.retrieval_pointer(self._retriever()),
            }
            path = ckpt.save_checkpoint(
                self.out,
                self.step,
                self.model,
                self.tok,
                self.optimizer,
                self.scheduler,
                self.cfg.trainer.keep_last,
                extra,
                model_state=model_state,
                optimizer_state=optim_state,
            )
        self.dist.barrier()
        return path
