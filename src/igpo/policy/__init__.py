"""The policy: model loading (HF directory, cached hub id, GGUF), LoRA, and log-prob / belief scoring."""

from igpo.policy.loading import load_policy, load_tokenizer

__all__ = ["load_policy", "load_tokenizer"]
