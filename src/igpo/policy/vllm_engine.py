"""vLLM as the rollout backend (`rollout.backend: vllm`, the `igpo[vllm]` extra, GPU machines).

The engine runs in the trainer's process, one per rank, on the rank's GPU (colocated, tensor parallel 1). It
holds its own copy of the weights, so after every update the trainer pushes its weights (`push_weights`), and
then checks that the push took: a fingerprint (a fixed sample of 4096 elements of every tensor the engine stores
unfused: embeddings, attention output and MLP down projections, norms) is read back from the engine and
compared with the trainer's tensors cast to the engine's dtype. A push that silently did not
land (renamed parameters skipped by the loader, a stale copy) is an error, not a quietly off-policy run.

Each generation carries the engine's log-prob of every sampled token (temperature 1, before top-p, i.e. the
same quantity the trainer computes), kept per turn in the trajectory for the TIS correction
(`algorithm.tis_cap`) and the `rollout_lp_abs_diff` metric.

vLLM is imported only when an engine is built: everything else here runs (and is tested) without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Protocol

import torch

from igpo.agent.generators import Generation, OwnWeightsGenerator, SamplingParams, cut_at_stop
from igpo.config import Config
from igpo.policy.loading import ModelLoadError, resolve_model_dir

# Tensors that vLLM's loaders for Llama/Qwen/Mistral-style models copy unchanged (q/k/v and gate/up are fused
# there, so their layout differs): the fingerprint is read from all of these.
FINGERPRINT_NAME = re.compile(r"(embed_tokens|o_proj|down_proj|norm|layernorm)\.weight$")


class WeightSyncError(RuntimeError):
    """The engine's weights differ from the trainer's after a push."""


class Engine(Protocol):
    """What VLLMGenerator needs from an engine (the real one is `VLLMEngine`; tests use a fake)."""

    dtype: torch.dtype

    def generate(
        self, contexts: list[list[int]], params: SamplingParams, stop_ids: list[int]
    ) -> list[tuple[list[int], list[float]]]:
        """Per context: sampled ids and the log-prob of each."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def fingerprints(self, shapes: dict[str, torch.Size], n: int) -> dict[str, torch.Tensor]:
        """`weight_fingerprint` of each named engine tensor, cut to the trainer's shape (vocab padding)."""


def weight_fingerprint(t: torch.Tensor, dtype: torch.dtype, n: int) -> torch.Tensor:
    """[≤ n] float64: every k-th element of `t` in `dtype` (k = numel // n), the same on both sides.

    Exact values rather than a sum: an update of lr 1e-6 moves few bf16 values by one ulp, which a sum can hide.
    """
    flat = t.detach().to(dtype).reshape(-1)
    step = max(1, flat.numel() // n)
    return flat[::step][:n].double().cpu()


class VLLMGenerator(OwnWeightsGenerator):
    """A `Generator` over a vLLM engine, which holds its own weights (checked pushes) and records its sampling
    log-probs."""

    records_logprobs = True

    def __init__(self, engine: Engine, check_weights: bool = True, fingerprint_size: int = 4096):
        self.engine, self.check_weights, self.n = engine, check_weights, fingerprint_size
        self.pushes = 0

    @classmethod
    def from_config(cls, cfg: Config, distributed: bool) -> VLLMGenerator:
        v = cfg.rollout.vllm
        path, _ = resolve_model_dir(cfg.model)  # a GGUF (smollm2) is converted to a model directory first
        engine = VLLMEngine(
            path,
            v.dtype,
            cfg.rollout.max_context,
            v.gpu_memory_utilization,
            v.enforce_eager,
            cfg.trainer.seed,
            distributed,
        )
        return cls(engine, v.check_weights)

    def generate(self, contexts: list[list[int]], params: SamplingParams, stop_ids: list[int]) -> list[Generation]:
        out = []
        for ids, logprobs in self.engine.generate(contexts, params, stop_ids):
            ids = cut_at_stop(list(ids), stop_ids)
            out.append(Generation(ids, list(logprobs)[: len(ids)]))
        return out

    def push_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Loads (name, whole tensor) pairs into the engine, then compares fingerprints (`check_weights`).

        The pairs are streamed into the engine: only the fingerprints of candidate tensors are kept.
        """
        candidates: dict[str, tuple[torch.Tensor, torch.Size]] = {}

        def stream():
            for name, t in weights:
                if self.check_weights and FINGERPRINT_NAME.search(name):
                    candidates[name] = (weight_fingerprint(t, self.engine.dtype, self.n), t.shape)
                yield name, t

        self.engine.load_weights(stream())
        self.pushes += 1
        if not self.check_weights:
            return
        names = list(candidates)
        if not names:
            raise WeightSyncError("no parameter to fingerprint (embed_tokens, o_proj, down_proj or norm weights)")
        got = self.engine.fingerprints({n: candidates[n][1] for n in names}, self.n)
        bad = []
        for name in names:
            want, have = candidates[name][0], got.get(name)
            if have is None:
                bad.append(f"{name}: not in the engine")
            elif have.shape != want.shape or not torch.equal(have, want):
                diff = (have - want).abs().max().item() if have.shape == want.shape else float("nan")
                bad.append(f"{name}: max abs difference {diff:.3g}")
        if bad:
            raise WeightSyncError(
                f"weight push {self.pushes}: the engine's weights differ from the trainer's ({'; '.join(bad)})"
            )


class VLLMEngine:
    """A vLLM `LLM` in this process (tensor parallel 1). Needs vLLM and a GPU."""

    def __init__(
        self,
        model_path: str,
        dtype: str,
        max_model_len: int,
        gpu_memory_utilization: float,
        enforce_eager: bool,
        seed: int,
        distributed: bool,
    ):
        try:
            import vllm
        except ImportError as e:
            raise ModelLoadError(
                "rollout.backend=vllm needs vLLM, which is not installed: pip install 'igpo[vllm]' on a GPU "
                f"machine ({e})"
            ) from None
        # The engine core in this process, so that apply_model reaches the model without serialising weights.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        kwargs = {
            "model": model_path,
            "dtype": dtype,
            "max_model_len": max_model_len,
            "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization,
            "enforce_eager": enforce_eager,
            "logprobs_mode": "processed_logprobs",
            "tensor_parallel_size": 1,
        }
        if distributed:  # one engine per torchrun rank, on the rank's GPU
            kwargs["distributed_executor_backend"] = "external_launcher"
        self.llm = vllm.LLM(**kwargs)
        self._sampling = vllm.SamplingParams
        self.dtype = self.llm.llm_engine.model_config.dtype

    def generate(self, contexts, params, stop_ids):
        sps = [
            self._sampling(
                n=1,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                stop_token_ids=list(stop_ids),
                logprobs=0,
                seed=None if params.seeds is None else int(params.seeds[i]) % (2**63),
                detokenize=False,
            )
            for i in range(len(contexts))
        ]
        outs = self.llm.generate([{"prompt_token_ids": c} for c in contexts], sps, use_tqdm=False)
        res = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            res.append((ids, [step[t].logprob for t, step in zip(ids, c.logprobs)]))
        return res

    def load_weights(self, weights):
        self.llm.apply_model(lambda model: model.load_weights(weights))

    def fingerprints(self, shapes, n):
        dtype = self.dtype

        def read(model):
            params = dict(model.named_parameters())
            return {
                name: weight_fingerprint(params[name][tuple(slice(0, s) for s in shape)], dtype, n)
                for name, shape in shapes.items()
                if name in params
            }

        return self.llm.apply_model(read)[0]
