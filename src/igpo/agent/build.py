"""An agent from a config: the generator that samples its turns, the chat format that renders them, the tools it
calls. Training, evaluation, the SFT warm start, the benchmarks and the tests all build theirs here."""

from __future__ import annotations

from dataclasses import dataclass

from igpo.agent.engine import CachedGenerator
from igpo.agent.generators import Generator, HFGenerator, OwnWeightsGenerator
from igpo.agent.template import DEFAULT_SYSTEM_PROMPT, WEB_SEARCH_SYSTEM_PROMPT, ChatFormat
from igpo.agent.tools import SearchTool, Toolbox, WebSearchTool
from igpo.config import Config
from igpo.policy.loading import whole_weights

# `rollout.engine`: the backends that sample from the trainer's own model.
ENGINES = {"cached": CachedGenerator, "hf": HFGenerator}


@dataclass
class Agent:
    """What plays episodes (`igpo.agent.rollout.rollout`): `generator` samples the turns that `fmt` renders,
    and `toolbox` runs the tool calls."""

    generator: Generator
    fmt: ChatFormat
    toolbox: Toolbox


def make_toolbox(cfg: Config) -> Toolbox:
    """The tool `retrieval.tool` names over the retriever `retrieval` describes."""
    from igpo.retrieval.factory import make_retriever, make_web_search

    r = cfg.retrieval
    if r.tool == "web_search":
        return Toolbox([WebSearchTool(make_web_search(r), r.topk, r.max_passage_words, r.web.max_queries)])
    return Toolbox([SearchTool(make_retriever(r), r.topk, r.max_passage_words)])


def make_chat_format(cfg: Config, tokenizer, toolbox: Toolbox) -> ChatFormat:
    """The chat format of `tokenizer` with the toolbox's schemas; `rollout.system_prompt`, or the built-in one."""
    default = WEB_SEARCH_SYSTEM_PROMPT if "web_search" in toolbox.tools else DEFAULT_SYSTEM_PROMPT
    prompt = cfg.rollout.system_prompt or default
    return ChatFormat(tokenizer, prompt, toolbox.schemas(), cfg.algorithm.belief_probe)


def make_generator(cfg: Config, model, pad_id: int, distributed: bool = False) -> Generator:
    """The generator `rollout.backend` names: a vLLM engine with its own copy of `model.path`'s weights (`vllm`;
    one per rank when `distributed`), or `rollout.engine` over `model` (`hf`)."""
    r = cfg.rollout
    if r.backend == "vllm":
        from igpo.policy.vllm_engine import VLLMGenerator

        return VLLMGenerator.from_config(cfg, distributed)
    if r.engine not in ENGINES:
        raise ValueError(f"rollout.engine: unknown engine {r.engine!r} (choose from {', '.join(ENGINES)})")
    return ENGINES[r.engine](model, pad_id)


def build_agent(cfg: Config, model, tokenizer, toolbox: Toolbox | None = None) -> Agent:
    """The agent that plays `model` as `cfg` says (`toolbox`: one already built, to share its retriever).

    A generator with its own copy of the weights (vLLM) gets `model`'s (a LoRA adapter merged into its base): the
    agent plays `model`, whatever `model.path` holds. (The trainer builds the same parts itself, and pushes its
    weights after each update.)
    """
    toolbox = toolbox or make_toolbox(cfg)
    generator = make_generator(cfg, model, tokenizer.pad_token_id)
    if isinstance(generator, OwnWeightsGenerator):
        generator.push_weights(whole_weights(model), model)
    return Agent(generator, make_chat_format(cfg, tokenizer, toolbox), toolbox)
