"""Everything that changes how the model runs without changing what it computes: data parallelism (DDP or
FSDP2 `fully_shard`), activation checkpointing and torch.compile. The model file never sees any of it.

A run is distributed when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from fournil.lm.llama import Llama
from fournil.train.device import choose


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> World:
    """Join the torchrun process group if there is one; pick this rank's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if size == 1:
        return World(device=torch.device("cuda" if cuda else "cpu"))
    if not dist.is_initialized():
        dist.init_process_group(choose("cuda" if cuda else "cpu").backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    return World(dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local_rank}" if cuda else "cpu"))


def teardown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def parallelize(model: Llama, world: World, mode: str, activation_checkpointing: bool, compile: bool) -> nn.Module:
    """Apply AC → compile → data parallelism (torchtitan's order), keeping parameter names unchanged."""
    for block in model.model.layers:
        if activation_checkpointing:
            block.forward = functools.partial(_checkpointed, block.forward)
        if compile:
            block.compile()
    if world.size == 1:
        return model
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[world.device.index] if world.device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)
    return model


def _checkpointed(forward, *args):
    return checkpoint(forward, *args, use_reentrant=False)


def all_mean(value: float, world: World) -> float:
    """The mean of a number over ranks (for logging losses measured on each rank's share of the batch)."""
    if world.size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=world.device)
    dist.all_reduce(tensor)
    return tensor.item() / world.size


def all_max(value: int, world: World) -> int:
    """The largest of an integer over ranks: one rank's stop request becomes every rank's, at the same step."""
    if world.size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=world.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()
