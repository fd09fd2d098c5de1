"""An agent from a config: the generator that samples its turns, the chat format that renders them, the tools it
calls. Training, evaluation, the SFT warm start, the benchmarks and the tests all build theirs here."""
from __future__ import annotations

from igpo.agent.engine import CachedGenerator
from igpo.agent.generators import Generator, HFGenerator
from igpo.config import Config

# `rollout.engine`: the backends that sample from the trainer's own model.
ENGINES = {"cached": CachedGenerator, "hf": HFGenerator}


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
