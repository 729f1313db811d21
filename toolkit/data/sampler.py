"""Which records each rank reads, batch by batch: a pure function of (seed, epoch, rank, world).

Train: one permutation of all records per (seed, epoch); global batch b is positions
[b*G, (b+1)*G) of it (G = batch x world) and rank r takes its r-th slice of B, so ranks never
overlap, every rank has the same number of full batches every epoch, and starting at batch k gives
exactly the tail of the uninterrupted epoch. Eval: rank r reads a contiguous 1/world of the records
in order, the last batch partial: every image exactly once, whatever the world size.
"""
import numpy as np
import torch

from toolkit.errors import UserError


ORDER, SAMPLE, DALI, DROPOUT, LIGHTING = 0, 1, 2, 3, 4  # independent random streams of one (seed, epoch)


def sample_seed(seed: int, epoch: int, position: int = 0, stream: int = SAMPLE) -> int:
    """Seed of one sample's augmentation draws (or of an epoch's order): a pure function of its
    arguments, so independent of worker count, batch layout and where a run was resumed."""
    state = np.random.SeedSequence([seed, epoch, stream, position]).generate_state(1, np.uint64)[0]
    return int(state >> 1)


class RankBatches:
    """Batch sampler yielding [(record, epoch, position), ...] for one rank."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, train: bool, seed: int):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.train, self.seed = train, seed
        self.epoch, self.start = 0, 0
        self._order = None  # ((seed, epoch), permutation) of the last epoch asked for
        if train and n < batch_size * world:
            raise UserError(f"batch size {batch_size} x {world} process(es) is larger than the "
                            f"{n} training records; lower --batch-size")
        lo, hi = self._eval_range()
        if not train and hi == lo and n >= world:
            raise UserError(f"rank {rank} has no evaluation records")

    def _eval_range(self):
        return self.n * self.rank // self.world, self.n * (self.rank + 1) // self.world

    def set_epoch(self, epoch: int, start_batch: int = 0):
        self.epoch, self.start = epoch, start_batch

    def __len__(self) -> int:
        if self.train:
            return self.n // (self.batch_size * self.world)
        lo, hi = self._eval_range()
        return -(-(hi - lo) // self.batch_size)

    @property
    def num_samples(self) -> int:
        lo, hi = self._eval_range()
        return len(self) * self.batch_size if self.train else hi - lo

    def order(self) -> np.ndarray:
        if self._order is None or self._order[0] != (self.seed, self.epoch):
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, stream=ORDER))
            self._order = ((self.seed, self.epoch), torch.randperm(self.n, generator=g).numpy())
        return self._order[1]

    def batch(self, b: int) -> list:
        """Batch b of the current epoch, whatever the start: the DALI backend's external source asks
        for batches by number, from worker processes."""
        if self.train:
            perm, first = self.order(), b * self.batch_size * self.world + self.rank * self.batch_size
            return [(int(perm[p]), self.epoch, p) for p in range(first, first + self.batch_size)]
        lo, hi = self._eval_range()
        first = lo + b * self.batch_size
        return [(p, self.epoch, p) for p in range(first, min(first + self.batch_size, hi))]

    def __iter__(self):
        for b in range(self.start, len(self)):
            yield self.batch(b)
