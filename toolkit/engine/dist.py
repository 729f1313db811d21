"""torchrun-native process setup: RANK / LOCAL_RANK / WORLD_SIZE read in one place, NCCL on GPUs,
Gloo on CPU, and the few collectives the engine needs."""
import dataclasses
import datetime
import os

import torch
import torch.distributed as dist

from toolkit.errors import UserError


@dataclasses.dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup() -> DistEnv:
    """Initialise the process group when launched by torchrun (WORLD_SIZE set), else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda and local_rank >= torch.cuda.device_count():
        raise UserError(f"process {local_rank} of this node has no GPU: the node has "
                        f"{torch.cuda.device_count()}; use torchrun --nproc_per_node={torch.cuda.device_count()}")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30),
                                device_id=device if cuda else None)
    return DistEnv(rank, local_rank, world, device)


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_reduce_max_async(t: torch.Tensor):
    """Start an in-place MAX all-reduce of t; returns the handle to wait on (None: one process)."""
    if dist.is_initialized():
        return dist.all_reduce(t, op=dist.ReduceOp.MAX, async_op=True)
    return None


def barrier():
    if dist.is_initialized():
        dist.barrier()


def broadcast_buffers(model: torch.nn.Module):
    """Give every rank rank 0's buffers (BatchNorm running statistics) before evaluating or saving."""
    if dist.is_initialized():
        for b in model.buffers():
            dist.broadcast(b, 0)
