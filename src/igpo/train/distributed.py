"""Data-parallel and FSDP training across processes started by torchrun (gloo on CPU, nccl on GPU).

How a step is split, and why the result equals a single-process run with the same global batch and seeds:
- Questions: each rank takes a contiguous, disjoint share of the step's questions (`shard`); a question's G
  rollouts stay on one rank, so the group statistics of the advantages are exact.
- Sampling: every episode draws from its own seed (trainer seed, step, question index in the step, rollout
  index), never from a stream shared by the batch, so rank r samples exactly the episodes the single process
  would have sampled for the same questions.
- Loss: the mini-batch normalisers (sequence and token counts) are summed over ranks (`all_sum`), so each
  rank's loss is its share of the global loss. DDP and FSDP average gradients over ranks; the loss is therefore
  multiplied by the world size (`grad_scale`) and the averaged gradient is the single-process gradient.
- Mini-batches: each rank shuffles its own rows with the step's seed and cuts them into `trainer.mini_batches`
  chunks; a global mini-batch is the union of the ranks' chunks. With one mini-batch a step (the default) this
  is the single-process batch exactly; with several it is an equally random split, not the same one.
- Metrics: trajectories, rewards and advantages are gathered to rank 0, which computes the step's metrics on
  the whole batch (`gather_step`); loss terms are summed, timings are the slowest rank's.
- Files: only rank 0 writes metrics, evaluations and checkpoints. Checkpoints hold full (unsharded) weights
  and optimizer state in the single-process format, so a run resumes with the same or another world size.

FSDP2 (`fully_shard`) shards each decoder layer (the model's `_no_split_modules`) and the root. Rollout,
belief scoring and evaluation run a different number of forwards on each rank, which sharded forwards (one
all-gather per layer per forward) cannot do: they run inside `gathered()`, which all-gathers the parameters
once and keeps them whole until the block ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from igpo.config import Config, ConfigError
from igpo.train.metrics import StepResult, merge_losses


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    parallel: str = "ddp"  # ddp | fsdp, when world_size > 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def fsdp(self) -> bool:
        return self.enabled and self.parallel == "fsdp"

    @property
    def grad_scale(self) -> float:
        """Multiplies each rank's loss: DDP and FSDP average gradients over ranks, our losses are global sums."""
        return float(self.world_size)

    # ------------------------------------------------------------------ data
    def shard(self, n: int) -> range:
        """Indices of this rank's items among n (n is a multiple of the world size)."""
        per = n // self.world_size
        return range(self.rank * per, (self.rank + 1) * per)

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    # ------------------------------------------------------------------ model
    def wrap(self, model, param_dtype: str | None = None):
        """The module to train through: DDP's wrapper, or the model sharded in place (FSDP), or the model.

        Build the optimizer after this call: FSDP replaces the parameters by sharded ones.
        """
        if not self.enabled:
            return model
        if self.fsdp:
            shard_module(model, param_dtype)
            return model
        from torch.nn.parallel import DistributedDataParallel

        dev = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    def shard_frozen(self, module, param_dtype: str | None = None) -> None:
        """FSDP shards a frozen module (the reference) too; DDP keeps a whole copy per rank."""
        if self.fsdp and module is not None:
            shard_module(module, param_dtype)

    @contextmanager
    def gathered(self, model) -> Iterator[None]:
        """Whole parameters for the block (FSDP): forwards inside need no collective, so ranks may differ."""
        if not self.fsdp:
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for m in mods:
            m.set_reshard_after_forward(False, recurse=False)
            m.unshard()
        try:
            yield
        finally:
            for m in mods:
                m.reshard()
                # fully_shard's defaults: layers reshard after forward, the root keeps its few parameters.
                m.set_reshard_after_forward(m is not model, recurse=False)

    def grad_sync(self, train_model, sync: bool):
        """Gradient accumulation without communication on all but the last micro-batch of a mini-batch."""
        if not self.enabled or sync:
            return nullcontext()
        if self.fsdp:
            return _fsdp_no_sync(train_model)
        return train_model.no_sync()

    def clip_grad_norm(self, params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        """Global gradient norm before clipping, as a plain tensor (FSDP returns a replicated DTensor)."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def full_parameters(self, model) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, whole tensor) of every parameter; under FSDP one all-gather per tensor (all ranks iterate)."""
        for name, p in model.named_parameters():
            yield name, (p.full_tensor() if hasattr(p, "full_tensor") else p).detach()

    # ------------------------------------------------------------------ checkpoints
    def full_state(self, model, optimizer) -> tuple[dict | None, dict | None]:
        """Under FSDP, the whole model and optimizer state on rank 0 (collective: every rank calls it).

        The optimizer state is renumbered from parameter names to positions: the format of
        `optimizer.state_dict()` in a single process. Without FSDP: (None, None), the live objects are whole.
        """
        if not self.fsdp:
            return None, None
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = get_model_state_dict(model, options=opts)
        optim_sd = get_optimizer_state_dict(model, optimizer, options=opts)
        if not self.is_main:
            return None, None
        names = [n for g in optim_sd["param_groups"] for n in g["params"]]
        index = {n: i for i, n in enumerate(names)}
        return model_sd, {
            "state": {index[n]: s for n, s in optim_sd["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in optim_sd["param_groups"]],
        }

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        """A single-process-format optimizer state into the live optimizer (sharded under FSDP)."""
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        # Positions follow the optimizer's parameter order, which is the model's order of trainable parameters.
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        if len(names) != sum(len(g["params"]) for g in state["param_groups"]):
            raise ConfigError("checkpoint: its optimizer state does not match the model's trainable parameters")
        by_name = {
            "state": {names[i]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
        }
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))

    # ------------------------------------------------------------------ metrics
    def gather(self, obj) -> list | None:
        """Every rank's `obj` on rank 0 (in rank order); None on the other ranks."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


@contextmanager
def _fsdp_no_sync(model) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def shard_module(model, param_dtype: str | None = None) -> None:
    """FSDP2 in place: each decoder layer, then the root (embeddings, final norm, a tied head)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {}
    if param_dtype is not None:
        # Whole parameters are gathered in `param_dtype` for compute; the shards (master weights, optimizer
        # states) stay in the model's dtype and gradients are reduced in fp32.
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=getattr(torch, param_dtype), reduce_dtype=torch.float32)
    layers = set(getattr(model, "_no_split_modules", None) or [])
    if not layers:
        raise ConfigError(
            f"trainer.parallel=fsdp: {type(model).__name__} names no decoder layer class (_no_split_modules) to shard"
        )
    for m in model.modules():
        if type(m).__name__ in layers:
            fully_shard(m, **kwargs)
    fully_shard(model, **kwargs)


def check_world(cfg: Config, world_size: int) -> None:
    q = cfg.rollout.questions_per_step
    if q % world_size:
        raise ConfigError(
            f"rollout.questions_per_step ({q}) must be a multiple of the number of processes "
            f"({world_size}): each process rolls out an equal share of the questions"
        )


def setup(cfg: Config) -> tuple[Dist, Config]:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT), if any.

    Returns this rank's view and the config with this rank's device (`cuda` → `cuda:LOCAL_RANK`). Checks that
    the step's questions split evenly over the ranks.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = cfg.model.device
    on_gpu = device.startswith("cuda")
    if world > 1 and not dist.is_initialized():
        if on_gpu:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if on_gpu else "gloo")
    if not dist.is_initialized():
        return Dist(parallel=cfg.trainer.parallel), cfg
    d = Dist(dist.get_rank(), dist.get_world_size(), local_rank, cfg.trainer.parallel)
    check_world(cfg, d.world_size)
    if device == "cuda":
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"device": f"cuda:{local_rank}"})})
    return d, cfg


def gather_step(d: Dist, res: StepResult) -> StepResult | None:
    """The whole step on rank 0: trajectories and outcomes concatenated in rank order, turn tensors [B, T]
    padded to the longest episode, loss terms reduced (`metrics.merge_losses`), timings of the slowest rank.
    None on other ranks."""
    parts: list[StepResult] | None = d.gather(res)
    if parts is None:
        return None
    T = max(p.rewards.shape[1] for p in parts)

    def cat(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(t, (0, T - t.shape[1])) for t in tensors])

    seconds: dict[str, float] = {}
    for p in parts:
        for k, v in p.seconds.items():
            seconds[k] = max(seconds.get(k, 0.0), v)
    return StepResult(
        trajs=[t for p in parts for t in p.trajs],
        rewards=cat([p.rewards for p in parts]),
        turn_mask=cat([p.turn_mask for p in parts]),
        outcomes=[o for p in parts for o in p.outcomes],
        turn_adv=cat([p.turn_adv for p in parts]),
        losses=merge_losses([p.losses for p in parts]),
        seconds=seconds,
    )
