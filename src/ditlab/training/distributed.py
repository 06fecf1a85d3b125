"""torchrun integration: one code path for one process and for many (DDP or FSDP2, on NCCL or gloo).

World-size invariance. Training with N processes at global batch B computes what one process at batch
B computes (up to float summation order), and a run may resume with another N:

- the data order is a pure function of (seed, global batch number) (``data_source.BatchOrder``), each
  rank taking its contiguous slice of every global batch;
- every random draw of a step (diffusion time t, noise, label dropout) is made for the GLOBAL batch from
  a generator seeded by (seed, step) on every rank (:func:`draw_step`), and each rank keeps its slice;
- each rank's loss is the mean over its slice and DDP / FSDP average gradients over ranks, so the
  gradient is the mean over the global batch;
- checkpoints hold full (unsharded) tensors in the single-process layout, written by rank 0.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ditlab.errors import ConfigError
from ditlab.seeding import Stream, derive_seed


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where collectives' tensors live (cuda for NCCL)
    owns_group: bool = False  # this run joined the process group (and leaves it in ``cleanup``)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_world_size() -> int:
    """The number of processes torchrun started (1 for a plain process), known before joining a group."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def check_launch(fsdp: bool) -> None:
    """``--fsdp`` shards over the processes torchrun starts: refuse it in a plain process."""
    if fsdp and not launched_by_torchrun():
        raise ConfigError(
            "--fsdp shards the model over processes started by torchrun, and this is a plain process: "
            "launch with `torchrun --nproc_per_node N $(which ditlab) train ... --fsdp`, or drop --fsdp"
        )
    if fsdp:
        try:
            from torch.distributed.fsdp import fully_shard  # noqa: F401  (FSDP2, torch >= 2.6)
        except ImportError:
            raise ConfigError(f"--fsdp needs PyTorch >= 2.6 (FSDP2), this is {torch.__version__}: "
                              f"upgrade torch, or drop --fsdp (DDP)") from None


def init_distributed(device: torch.device, need_group: bool = False) -> DistInfo:
    """Join the process group that torchrun describes in the environment (no-op for one process).

    ``need_group`` joins even when the world has one process (FSDP needs a group to shard over).
    """
    if not launched_by_torchrun():
        return DistInfo(device=device)
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local)
    joined = False
    if (world > 1 or need_group) and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        joined = True
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device, owns_group=joined)


def check_batch_split(global_batch_size: int, world_size: int) -> int:
    """The per-rank batch; the global batch must split evenly over the ranks."""
    if global_batch_size % world_size:
        raise ConfigError(
            f"global_batch_size {global_batch_size} does not divide over {world_size} processes: "
            f"use a multiple of {world_size}"
        )
    return global_batch_size // world_size


def check_compile_backend(device: torch.device) -> None:
    """``--compile`` needs TorchDynamo on this Python and inductor's code generator for the device:
    a C++ compiler on CPU, Triton on CUDA. Raise ConfigError naming the fix before any work starts."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError("--compile is not supported by this Python/PyTorch build: drop --compile")
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ConfigError("--compile on a GPU needs Triton, which is not installed: pip install triton, "
                              "or drop --compile")
        return
    candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if not any(c and shutil.which(c) for c in candidates):
        raise ConfigError("--compile on CPU needs a C++ compiler (g++ or clang++) on PATH, and none was found: "
                          "install one (e.g. apt install g++), set CXX, or drop --compile")


# ------------------------------------------------------------------------------ global randomness
@dataclass
class StepDraws:
    """The random inputs of one training step, for the whole global batch."""

    t: Tensor  # (B,) diffusion times (long step indices for ddpm, floats for flow)
    noise: Tensor  # (B, C, H, W)
    drop: Tensor | None  # (B,) bool: replace the condition by the null one (classifier-free guidance)
    choice: Tensor  # (B,) uniform in [0, 1): which option of an item to use (e.g. one of its captions)

    def local(self, lo: int, n: int) -> StepDraws:
        """Rows ``lo .. lo + n`` (one rank's slice)."""
        drop = None if self.drop is None else self.drop[lo : lo + n]
        return StepDraws(self.t[lo : lo + n], self.noise[lo : lo + n], drop, self.choice[lo : lo + n])


def draw_step(process, seed: int, step: int, global_batch: int, latent_shape: tuple[int, ...],
              device: torch.device, drop_prob: float = 0.0) -> StepDraws:
    """t, noise, the condition-dropout mask and the option choice for global batch ``step``: a pure function
    of (seed, step), identical on every rank whatever the world size (also after a resume)."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, step, Stream.STEP))
    t = process.sample_t(global_batch, device=device, generator=g)  # (B,)
    noise = torch.randn((global_batch, *latent_shape), device=device, generator=g)  # (B, C, H, W)
    drop = torch.rand(global_batch, device=device, generator=g) < drop_prob if drop_prob > 0 else None
    choice = torch.rand(global_batch, device=device, generator=g)  # drawn last: the draws above keep their values
    return StepDraws(t, noise, drop, choice)


# ------------------------------------------------------------------------------ wrapping
def fsdp_shard(model: nn.Module, info: DistInfo) -> nn.Module:
    """Shard ``model`` in place with FSDP2: each transformer block is one unit, the rest the root unit.

    Parameters become DTensors sharded over all ranks; gradients and optimiser state follow them.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for block in getattr(model, "blocks", []):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def wrap_ddp(model: nn.Module, info: DistInfo, find_unused_parameters: bool = False) -> nn.Module:
    """DDP; ``find_unused_parameters`` for steps that leave some parameters out (a video model's image steps)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
               find_unused_parameters=find_unused_parameters)


# ------------------------------------------------------------------------------ state dicts
def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(module: nn.Module) -> dict[str, Tensor]:
    """The unsharded state dict (on rank 0; ``{}`` elsewhere for a sharded module). Collective when sharded."""
    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_full_options())


def load_model_state(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a full state dict (every rank passes all of it); each rank keeps its shard when sharded."""
    if not is_sharded(module):
        module.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))


def _param_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser state in the single-process layout (parameters numbered in ``model.parameters()``
    order), whatever the sharding: a checkpoint resumes with or without FSDP, at any world size.
    Collective when sharded; ``{}`` on ranks other than 0 then."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer, options=_full_options())
    if not by_name:
        return {}
    index = {name: i for i, name in enumerate(_param_names(model))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]]
    for g in groups:  # the gather turns tuples into lists; keep torch's own layout
        g.update({k: tuple(v) for k, v in g.items() if k != "params" and isinstance(v, list)})
    return {"state": {index[n]: s for n, s in by_name["state"].items()}, "param_groups": groups}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Inverse of :func:`full_optimizer_state` (every rank passes the whole state)."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _param_names(model)
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    by_name = {"state": {names[i]: s for i, s in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


# ------------------------------------------------------------------------------ collectives
def barrier(info: DistInfo) -> None:
    if (info.enabled or info.owns_group) and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank when any rank says True (e.g. a stop signal seen by one process)."""
    if not (info.enabled and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
