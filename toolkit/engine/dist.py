"""torchrun-native process setup: RANK / LOCAL_RANK / WORLD_SIZE read in one place, NCCL on GPUs,
Gloo on CPU, and the few collectives the engine needs."""
import dataclasses
import datetime
import os
import re
import time

import torch
import torch.distributed as dist

from toolkit.errors import Stalled, UserError


@dataclasses.dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(timeout: float = 300.0) -> DistEnv:
    """Initialise the process group when launched by torchrun (WORLD_SIZE set), else one process.
    `timeout`: seconds a collective may wait for the other ranks before it fails (lost_rank)."""
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
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout),
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


_LOST = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe", "closed by peer",
         "socket", "watchdog", "nccl error")


class LostRank(Stalled):
    """Another rank stopped answering: its own error, if it said one, is in told_errors()."""


def lost_rank(exc: Exception, env: DistEnv, timeout: float):
    """The one-line Stalled error for a collective that failed because another rank stopped
    answering (hung: after `timeout` s; died: at once), or None for any other error. With NCCL,
    torch's watchdog may end the process itself after the timeout (its own message)."""
    if env.world <= 1 or not isinstance(exc, (RuntimeError, dist.DistError)):
        return None
    text = str(exc).strip()
    if not any(word in text.lower() for word in _LOST):
        return None
    first = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0])[:200] if text else type(exc).__name__
    return LostRank(f"rank {env.rank}: another rank stopped answering (no reply within {timeout:g} s, or it "
                   f"died: {first}); the run stops here (checkpoints already written are kept): see the "
                   "other ranks' messages above, raise --timeout if a slow file system delays them, then "
                   "continue with tools/resume.py")


# --- one line per failing rank: a rank's error reaches rank 0 (and its log) through the rendezvous store
_ERROR_KEY = "cnn-toolkit/error/"


def _store():
    """The process group's key-value store (torchrun's agent store, or rank 0's TCPStore); None if
    there is none (one process) or it is unreachable."""
    if not dist.is_initialized():
        return None
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(datetime.timedelta(seconds=5))  # a store that went with its host: no long wait
        return store
    except Exception:
        return None


def tell_error(env: DistEnv, message: str):
    """Leave this rank's one-line error where the other ranks can read it (told_errors)."""
    store = _store()
    if store is not None:
        try:
            store.set(f"{_ERROR_KEY}{env.rank}", message)
        except Exception:  # the store's host is gone: this rank's own line is all there is
            pass


def told_errors(env: DistEnv, wait: float, ranks=None) -> dict:
    """{rank: message} of the other ranks (or of `ranks`) that told an error, waiting at most `wait`
    seconds for a first one (a rank that failed may still be on its way to say so)."""
    store = _store()
    if store is None:
        return {}
    ranks = [r for r in (range(env.world) if ranks is None else ranks) if r != env.rank]
    deadline, found = time.monotonic() + wait, {}
    while True:
        try:
            for r in ranks:
                if r not in found and store.check([f"{_ERROR_KEY}{r}"]):
                    found[r] = store.get(f"{_ERROR_KEY}{r}").decode(errors="replace")
        except Exception:
            return found
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)
