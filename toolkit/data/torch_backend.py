"""The `torch` backend: a Dataset over record shards and a DataLoader, uint8 all the way to the batch.

Workers read records through the .idx (each opens its own file handles), decode with libjpeg-turbo
(training: only the random crop's region, through nvImageCodec; evaluation: torchvision.io),
crop/flip/resize in uint8 (OpenCV), and write each image into its slot of a uint8 batch in shared
memory, so a whole batch crosses to the training process without a copy or a collate; conversion to
float and normalisation happen once per batch on the training device. Augmentation draws come from a
generator seeded by (seed, epoch, position), so they do not depend on the worker count and a resumed
epoch is bit-exact.
"""
import logging
import math
import os

import cv2
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from toolkit import recordio
from toolkit.data.decode import _roi_decoder, decode, decode_crop  # noqa: F401 (tests, benchmarks)
from toolkit.data.discovery import RecordSet
from toolkit.data import workers as worker_procs
from toolkit.data.sampler import LIGHTING, RankBatches, sample_seed
from toolkit.data.transforms import TrainTransform, pca_lighting
from toolkit.errors import UserError

log = logging.getLogger(__name__)
class UndecodableSplit(UserError):
    """Training found (nearly) nothing it can decode. Raised in a DataLoader worker, it reaches the
    training process rebuilt by torch from a message that holds the worker's traceback: the one line
    is taken back out of it, so the user still sees one line."""

    def __init__(self, message: str):
        lines = [ln for ln in message.splitlines() if f"{type(self).__name__}: " in ln]
        super().__init__(lines[-1].split(f"{type(self).__name__}: ", 1)[1] if lines else message)


class RecordDataset(Dataset):
    """Items are (record, epoch, position) from RankBatches. A batch of items comes back as one uint8
    tensor (N x transform.shape; in a worker, a slot of the BatchRing or fresh shared memory, so it
    crosses to the training process without a copy) and int64 labels; each sample is written into
    its place in the batch.

    A record that does not decode: in training it is logged once and the next record takes its
    place (a corrupt file must not end a multi-day run), but IN_A_ROW failures in a row, or more than
    half of the records read once 4 x IN_A_ROW have failed, end the run with one line; in evaluation it is left out
    (never counted twice) and flagged in `undecodable`, shared with the training process."""
    IN_A_ROW = 16

    def __init__(self, records: RecordSet, transform, seed: int = 0, pca_std: float = 0.0, ring=None):
        self.records, self.transform, self.seed, self.pca_std = records, transform, seed, pca_std
        self.ring = ring
        self.replace = isinstance(transform, TrainTransform)
        self.undecodable = None if self.replace else \
            torch.zeros(len(records), dtype=torch.uint8).share_memory_()
        self._reported = set()
        self._read, self._failed = 0, 0

    def _load(self, j: int, seed: int, out: torch.Tensor) -> int:
        header, payload = recordio.unpack(self.records.read(j))
        label = recordio.first_label(header.label)  # the first of a multi-label record
        self.transform(payload, seed, out)
        return int(label)

    def _fill(self, item, out: torch.Tensor):
        """The item's image into `out`; its label, or None (evaluation) when it does not decode."""
        i, epoch, position = item
        seed = sample_seed(self.seed, epoch, position)
        for attempt in range(min(self.IN_A_ROW, len(self.records)) if self.replace else 1):
            j = (i + attempt) % len(self.records)
            self._read += 1
            try:
                label = self._load(j, seed, out)
                break
            except Exception as exc:  # a corrupt record must not kill a multi-day run
                self._failed += 1
                self._report(j, exc)
                if not self.replace:
                    self.undecodable[j] = 1
                    return None
                if self._failed >= 4 * self.IN_A_ROW and self._failed * 2 > self._read:
                    raise UndecodableSplit(f"{self._failed} of {self._read} records read do not decode "
                                           f"(the latest: {self.records.where(j)}: {exc}); check the split "
                                           "with tools/im2rec.py --verify PREFIX") from None
        else:
            raise UndecodableSplit(f"{self.IN_A_ROW} records in a row do not decode, from "
                                   f"{self.records.where(i)} on; check the split with "
                                   "tools/im2rec.py --verify PREFIX")
        if self.pca_std:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, position, LIGHTING))
            out.copy_(pca_lighting(out, self.pca_std, g))
        return label

    def _report(self, j: int, exc: Exception):
        if j not in self._reported:
            self._reported.add(j)
            what = "using the next record instead" if self.replace else "not counted in this evaluation"
            log.warning("corrupt record skipped (%s): %s; %s", self.records.where(j), exc, what)

    def __getitems__(self, items):
        """In a worker with a free ring slot: (slot, labels); otherwise (images, labels). Images are
        packed from the front: a record left out (evaluation) leaves no hole."""
        worker, ring = get_worker_info(), self.ring
        slot = ring.take(worker.id) if ring is not None and worker is not None else None
        if slot is not None:
            images = ring.images[slot, :len(items)]
        elif worker is not None:  # as default_collate does: allocate in shared memory
            shape = (len(items), *self.transform.shape)
            images = torch.empty(0, dtype=torch.uint8).set_(
                torch.UntypedStorage._new_shared(math.prod(shape))).view(shape)
        else:
            images = torch.empty((len(items), *self.transform.shape), dtype=torch.uint8)
        labels = []
        for item in items:
            label = self._fill(item, images[len(labels)])
            if label is not None:
                labels.append(label)
        labels = torch.tensor(labels, dtype=torch.int64)
        return (images[:len(labels)] if slot is None else slot), labels

    def undecodable_records(self):
        """Where each record evaluation left out is (`file key K offset O`), in record order."""
        if self.undecodable is None:
            return []
        return [self.records.where(int(j)) for j in torch.nonzero(self.undecodable).flatten()]

    def __getitem__(self, item):
        images, labels = self.__getitems__([item])
        return images[0], int(labels[0])

    def __len__(self):
        return len(self.records)


def _as_is(batch):
    return batch  # __getitems__ returns the batch already formed


class TorchLoader:
    """The loader contract over a DataLoader: set_epoch(epoch, start_batch), len, iteration."""
    backend = "torch"

    def __init__(self, records: RecordSet, batches: RankBatches, transform, device, workers: int,
                 mean, std, channels_last=False, dtype=torch.float32, pca_std=0.0, seed=0, timeout=300.0,
                 what="the records"):
        self.batches, self.device, self.dtype, self.channels_last = batches, device, dtype, channels_last
        self.what = what  # for messages: "split 'train' of data/imagenet"
        prefetch = 4 if workers else None
        # CPU training: batch memory made once and reused (GPU: the pin-memory thread copies batches)
        self.ring = BatchRing.make(workers, prefetch + 1, (batches.batch_size, *transform.shape)) \
            if workers and device.type == "cpu" else None
        dataset = RecordDataset(records, transform, seed, pca_std, self.ring)
        self.loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_as_is,
                                 pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                 prefetch_factor=prefetch, worker_init_fn=worker_procs.worker_init,
                                 multiprocessing_context=worker_procs.context() if workers else None,
                                 timeout=worker_procs.wait_slice(timeout) if workers else 0)
        self.timeout = timeout
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.outputs = OutputPool()

    def set_epoch(self, epoch: int, start_batch: int = 0):
        self.batches.set_epoch(epoch, start_batch)

    def __len__(self):
        return len(self.batches)

    @property
    def num_samples(self):
        return self.batches.num_samples

    def undecodable_records(self):
        """Records an evaluation left out because they do not decode (see RecordDataset)."""
        return self.loader.dataset.undecodable_records()

    def __iter__(self):
        # with workers busy decoding on every core, the CPU normalisation runs on one thread:
        # torch's threads would only wait for the cores (measured: 24 against 13 ms of CPU a batch)
        one_thread = self.device.type == "cpu" and self.loader.num_workers > 0
        if self.ring is not None:
            self.ring.new_generation()  # before the DataLoader drains an abandoned epoch's batches
        try:
            yield from self._batches(one_thread)
        except (RuntimeError, ConnectionError, EOFError) as exc:  # a worker died or gave no batch in time
            stalled = worker_procs.stalled(exc, self.loader, self.what)
            if stalled is None:
                raise
            raise stalled from None

    def _batches(self, one_thread: bool):
        it = iter(self.loader)
        while True:
            try:
                images, labels = worker_procs.next_batch(it, self.timeout)
            except StopIteration:
                return
            slot = None
            if isinstance(images, int):
                slot, images = images, self.ring.images[images, :len(labels)]
            threads = torch.get_num_threads()
            if one_thread:
                torch.set_num_threads(1)
            try:
                x = normalize(images, self.mean, self.inv_std, self.device, self.dtype, self.channels_last,
                              self.outputs)
            finally:
                torch.set_num_threads(threads)
                if slot is not None:
                    self.ring.release(slot)
            yield x, labels.to(self.device, non_blocking=True)


class BatchRing:
    """uint8 batches in shared memory, made once and reused: each worker owns `slots` of them.

    A fresh shared-memory batch costs its pages faulted in the worker and mapped in the training
    process, about 15% of the loader's time (tools/benchmark.py loader, CPU). Hand-written because
    DataLoader has no such reuse. state[j] is the generation that holds slot j (0: free), state[-1]
    the current generation: the training process releases a slot right after normalising it, and
    starts a new generation with each epoch's iterator, so slots of batches an abandoned epoch left
    in flight (the DataLoader drains and drops them) come free again. A worker writes only its own
    slots and takes tasks in order, so a slot it takes is never still being written. With no slot
    free (a consumer holding batches up), the worker falls back to fresh shared memory."""

    def __init__(self, workers: int, slots: int, shape):
        self.slots = slots
        self.images = torch.empty((workers * slots, *shape), dtype=torch.uint8).share_memory_()
        self.state = torch.zeros(workers * slots + 1, dtype=torch.int64).share_memory_()

    @classmethod
    def make(cls, workers: int, slots: int, shape):
        """A ring, or None where it would take more than half the free shared memory (/dev/shm is
        often small in containers, and running out of it there is a SIGBUS, not an exception)."""
        need = workers * slots * math.prod(shape)
        try:
            st = os.statvfs("/dev/shm")
            free = st.f_bavail * st.f_frsize
        except OSError:
            return None
        return cls(workers, slots, shape) if need < free // 2 else None

    def new_generation(self):
        self.state[-1] += 1

    def take(self, worker: int):
        state = self.state.numpy()
        generation = state[-1]
        for j in range(worker * self.slots, (worker + 1) * self.slots):
            if state[j] != generation:  # free, or held by a batch of an abandoned epoch
                state[j] = generation
                return j
        return None

    def release(self, slot: int):
        self.state.numpy()[slot] = 0


class OutputPool:
    """CPU float batches, handed out again once nothing refers to them: no tensor or view (the batch
    itself is yielded as a view), no autograd graph that saved it, no numpy array. A fresh 64 x 3 x
    224 x 224 float batch costs ~9,400 page faults (or zeroing huge pages) in the training process,
    more than normalising it (tools/benchmark.py loader). The check is torch's storage use count;
    where this torch has no such call, every batch is fresh."""

    def __init__(self, size: int = 2):
        self.size, self.buffers = size, []
        self.use_count = getattr(torch._C, "_storage_Use_Count", None)

    def _free(self, t: torch.Tensor) -> bool:
        return self.use_count(t.untyped_storage()._cdata) <= 2  # the buffer and this call's handle

    def view(self, shape) -> torch.Tensor:
        if self.use_count is None:
            return torch.empty(shape)
        for t in self.buffers:
            if t.shape == shape and self._free(t):
                return t.view(shape)
        t = torch.empty(shape)
        if len(self.buffers) < self.size:
            self.buffers.append(t)
        else:  # replace one of another shape (an evaluation's last batch), else stay fresh
            other = [k for k, b in enumerate(self.buffers) if b.shape != shape and self._free(b)]
            if other:
                self.buffers[other[0]] = t
        return t.view(shape)


def _normalize_cpu(x, mean, inv_std, outputs):
    """The OpenCV pass, or None where OpenCV would not write in place (torch's ops then)."""
    scale, shift = inv_std.flatten().tolist(), (-mean * inv_std).flatten().tolist()
    out = outputs.view(x.shape) if outputs is not None else torch.empty(x.shape)
    src, dst = x.numpy().reshape(len(x), 3, -1), out.numpy().reshape(len(x), 3, -1)
    for c in range(3):
        plane = dst[:, c]
        done = cv2.addWeighted(src[:, c], scale[c], src[:, c], 0.0, shift[c], dst=plane, dtype=cv2.CV_32F)
        if done is not plane:
            return None
    return out


def normalize(images, mean, inv_std, device, dtype, channels_last, outputs: OutputPool = None):
    """uint8 batch -> normalised float on the device, after the batch is formed: x * (1/std) - mean/std.

    On the CPU, one OpenCV pass per channel (uint8 in, float32 out, SIMD; the channel's planes of all
    images are one strided 2-D array) into a reused batch: 2.2 against 6.3 ms for torch's conversion
    and two in-place passes into fresh memory (64 x 224 x 224, one core). On a GPU, torch's ops on the
    device (the same formula)."""
    x = images.to(device, non_blocking=True)
    shape = x.shape
    x = x.reshape(-1, *shape[-3:])
    cpu = x.device.type == "cpu" and x.is_contiguous() and len(x)
    out = _normalize_cpu(x, mean, inv_std, outputs) if cpu else None
    if out is not None:
        x = out.contiguous(memory_format=torch.channels_last) if channels_last else out
    else:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = x.to(torch.float32).mul_(inv_std).sub_(mean * inv_std)  # one conversion, two in-place passes
    x = x if dtype == torch.float32 else x.to(dtype)
    return x.reshape(shape) if len(shape) == 5 else x
