"""The `dali` backend: fn.readers.mxnet over all shards, decode on the GPU ("mixed") when CUDA is
there and on the CPU otherwise, random-resized-crop, flip and normalisation as DALI ops.

Traps handled: the reader takes ONE .idx, so several shards get a
combined index whose offsets run through the files laid end to end; the pipeline is rebuilt for
every epoch with a reader seed derived from (seed, epoch), so the order is deterministic per epoch
and the epoch length is the same on every rank and every epoch (floor of the smallest shard over
the batch: the remainder is dropped on purpose); `pad_last_batch=True` with PARTIAL batches in
evaluation yields each record of a rank's shard exactly once. Resume at batch k replays the first k
batches of that epoch's pipeline (exact, costs k batches of input work once).
A corrupt JPEG makes DALI's decoder raise: the run stops with DALI's message (it cannot substitute a
sample); use `--loader torch`, which logs and replaces corrupt records, or repair the shard.
"""
import hashlib
import os
import tempfile

import torch

from toolkit.atomic import atomic_open
from toolkit.data.discovery import RecordSet
from toolkit.data.sampler import DALI, sample_seed
from toolkit.data.torch_backend import eval_resize_for
from toolkit.errors import UserError


def combined_index(records: RecordSet) -> str:
    """One .idx over all shards, offsets as if the .rec files were concatenated (DALI's rule)."""
    if len(records.files) == 1:
        return records.files[0][1]
    key = hashlib.sha1(repr([(r, os.path.getsize(r), os.path.getmtime(r)) for r, _ in records.files])
                       .encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"dali-combined-{key}.idx")
    if not os.path.exists(path):
        base, lines = 0, []
        for reader in records.readers:
            lines += [f"{k}\t{base + int(o)}\n" for k, o in zip(reader.keys, reader.offsets)]
            base += reader.size
        with atomic_open(path) as f:
            f.writelines(lines)
    return path


def _pipeline(recs, idx, shard, world, train, size, resize, mean, std, gpu, reader_seed, min_scale, **kw):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(**kw)
    def pipe():
        jpegs, labels = fn.readers.mxnet(path=recs, index_path=[idx], shard_id=shard, num_shards=world,
                                         random_shuffle=train, stick_to_shard=True,
                                         pad_last_batch=True, seed=reader_seed, name="reader")
        device = "mixed" if gpu else "cpu"
        if train:
            images = fn.decoders.image_random_crop(jpegs, device=device, output_type=types.RGB,
                                                   random_area=[min_scale, 1.0], random_aspect_ratio=[3 / 4, 4 / 3])
            images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(jpegs, device=device, output_type=types.RGB)
            images = fn.resize(images, resize_shorter=resize, antialias=True)
            mirror = 0
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", crop=(size, size),
                                          mean=list(mean), std=list(std), mirror=mirror)
        return images, labels
    return pipe()


class DaliLoader:
    backend = "dali"

    def __init__(self, records: RecordSet, batch_size, rank, world, train, image_size, eval_resize,
                 seed, device, workers, mean, std, channels_last=False, dtype=torch.float32, min_scale=0.08):
        self.records, self.batch_size, self.rank, self.world = records, batch_size, rank, world
        self.train, self.size, self.seed, self.device = train, image_size, seed, device
        self.resize = eval_resize_for(image_size, eval_resize)
        self.workers, self.mean, self.std = max(1, workers), mean, std
        self.channels_last, self.dtype, self.min_scale = channels_last, dtype, min_scale
        self.idx = combined_index(records)
        n = len(records)
        self.shard_size = n * (rank + 1) // world - n * rank // world
        if train and n // world < batch_size:
            raise UserError(f"batch size {batch_size} is larger than a rank's share of the "
                            f"{n} records ({n // world}); lower --batch-size")
        self.epoch, self.start = 0, 0

    def __len__(self):
        if self.train:  # same on every rank: the smallest shard decides
            return (len(self.records) // self.world) // self.batch_size
        return -(-self.shard_size // self.batch_size)

    @property
    def num_samples(self):
        return len(self) * self.batch_size if self.train else self.shard_size

    def set_epoch(self, epoch: int, start_batch: int = 0):
        self.epoch, self.start = epoch, start_batch

    def _iterator(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
        gpu = self.device.type == "cuda"
        s = sample_seed(self.seed, self.epoch, stream=DALI) % (2 ** 31)
        pipe = _pipeline([r for r, _ in self.records.files], self.idx, self.rank, self.world,
                         self.train, self.size, self.resize, self.mean, self.std, gpu, s, self.min_scale,
                         batch_size=self.batch_size, num_threads=self.workers, seed=s + self.rank,
                         device_id=(self.device.index or 0) if gpu else None, prefetch_queue_depth=2)
        policy = LastBatchPolicy.DROP if self.train else LastBatchPolicy.PARTIAL
        return DALIGenericIterator([pipe], ["images", "labels"], reader_name="reader",
                                   last_batch_policy=policy, auto_reset=False)

    def __iter__(self):
        it = self._iterator()
        for b, out in enumerate(it):
            if b >= len(self):
                break
            if b < self.start:
                continue
            x, y = out[0]["images"], out[0]["labels"]
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x.to(self.dtype), y.view(-1).to(self.device, torch.int64)
