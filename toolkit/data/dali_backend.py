"""The `dali` backend: our RecordIO reader feeds DALI, in the order of the shared sampler; DALI decodes
(on the GPU, "mixed", when CUDA is there; on the CPU otherwise), resizes, flips and normalises.

Order: each batch is `RankBatches.batch(b)`, the same records, epoch and positions the torch backend
reads (one permutation per (seed, epoch), each rank its slice of every global batch), fed through
`fn.external_source` (batch mode; with `workers` > 0, in a worker process of DALI's, `parallel=True`).
A resume at batch k starts the sampler at k: nothing is read or decoded twice. Evaluation reads every
image of the rank's contiguous share exactly once, the last batch partial, as the torch backend does.

Augmentation: the crop window (torchvision's RandomResizedCrop algorithm, `TrainTransform.crop_box`),
the flip and the PCA-lighting shift are drawn in the external source from the generators the torch
backend uses, seeded by (seed, epoch, position); DALI decodes only that window
(`decoders.image_slice`) and does no random draws of its own. So a sample's augmentation depends on
nothing but (seed, epoch, position): a resumed epoch is bit-identical to the uninterrupted one, and
both backends crop, flip and light each sample alike (pixels differ by the decoders' and resizers'
rounding). EXIF orientation is applied by DALI's decoder; the window is drawn on the oriented size.
GIFs, which DALI does not decode, reach it as lossless BMPs of OpenCV's decode (`for_dali`).
Colour jitter and ten-crop are torch-only (`choose_backend` falls back to torch for them).

The pipeline lives across epochs and is rebuilt only when set_epoch does not continue it (a resume,
an abandoned epoch); between epochs it stays idle. The "mixed" decode and the source's spawned
workers on GPUs share all their logic with the CPU path the tests run; unverified on GPU.

The label of a record is `recordio.first_label`: the first label of a multi-label record.
A record DALI cannot decode stops the run with one line naming it (DALI cannot substitute or leave out
a sample); use `--loader torch`, which replaces corrupt records in training and leaves them out of
evaluation, naming them, or repair the shard.
"""
import hashlib
import io
import multiprocessing
import os
import re
import tempfile
import weakref

import numpy as np
import torch

from toolkit import recordio
from toolkit.atomic import atomic_open
from toolkit.data.discovery import RecordSet
from toolkit.data.sampler import LIGHTING, RankBatches, sample_seed
from toolkit.data.source_watch import SourceWatch
from toolkit.data.transforms import TrainTransform, eval_resize_for, lighting_shift
from toolkit.data.workers import quiet_children, serve_quietly
from toolkit.errors import Failed, Stalled, UserError


def combined_index(records: RecordSet) -> str:
    """One .idx over all shards, offsets as if the .rec files were concatenated: what DALI's
    readers.mxnet needs for several shards (tools/benchmark.py loader's baseline (a) uses it)."""
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


_EXIF_SWAPS = {5, 6, 7, 8}  # orientations that turn the image a quarter: height and width swap


def image_size(payload: bytes):
    """(height, width) of an encoded image as DALI's decoder outputs it (EXIF orientation applied),
    from its header: nvImageCodec's parser (installed with DALI; microseconds), Pillow for the
    orientation tag when the header holds EXIF and for what nvImageCodec does not parse."""
    try:
        from nvidia import nvimgcodec
        stream = nvimgcodec.CodeStream(payload)
        height, width = stream.height, stream.width
        if b"Exif\0\0" not in payload[:65536]:
            return height, width
    except Exception:  # not installed, or a format it does not parse: Pillow reads the header
        pass
    from PIL import Image
    with Image.open(io.BytesIO(payload)) as img:
        width, height = img.size
        orientation = img.getexif().get(0x0112)
    return (width, height) if orientation in _EXIF_SWAPS else (height, width)


_GIF = (b"GIF87a", b"GIF89a")


def for_dali(payload: bytes) -> bytes:
    """The image bytes DALI's decoder takes: a GIF (im2rec --pass-through stores them; nvImageCodec
    has no GIF codec) re-encoded as a lossless BMP of OpenCV's decode (its first frame, as MXNet's
    ImageRecordIter sees it); anything else as it is. GIFs are rare: the cost is theirs alone."""
    if payload[:6] not in _GIF:
        return payload
    import cv2
    from toolkit.data.decode import decode_opencv
    try:
        rgb = decode_opencv(payload).permute(1, 2, 0).numpy()
    except ValueError:  # not decodable at all: DALI says so
        return payload
    return cv2.imencode(".bmp", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


class BatchSource:
    """The external source: BatchInfo -> one batch's encoded images, labels and augmentation draws.

    Stateless as DALI's parallel mode needs: batch `iteration` of pipeline epoch `epoch_idx` is
    sampler batch `iteration` (+ start0 in the first) of epoch `epoch0 + epoch_idx`; the loader
    rebuilds the pipeline when a run asks for another sequence (set_epoch out of turn)."""

    def __init__(self, records: RecordSet, batches: RankBatches, crop: TrainTransform, seed: int,
                 pca_std: float, epoch0: int, start0: int, eval_sizes=(0, 0)):
        self.records, self.batches, self.crop, self.seed = records, batches, crop, seed
        self.eval_sizes = eval_sizes  # (shorter side, crop): evaluation's Resize and CenterCrop
        self.pca_std, self.epoch0, self.start0 = pca_std, epoch0, start0

    def __setstate__(self, state):
        """Unpickled in a spawned source worker (DALI on GPUs): its signals as the workers' rule."""
        self.__dict__.update(state)
        if multiprocessing.parent_process() is not None:  # not a copy made in the training process
            serve_quietly()

    def __call__(self, info):
        b = info.iteration + (self.start0 if info.epoch_idx == 0 else 0)
        if b >= len(self.batches):
            raise StopIteration
        if self.batches.train:  # evaluation's order does not depend on the epoch
            self.batches.set_epoch(self.epoch0 + info.epoch_idx)
        items = self.batches.batch(b)
        payloads, labels = [], np.empty(len(items), np.int64)
        for k, (i, _, _) in enumerate(items):
            header, payload = recordio.unpack(self.records.read(i))
            payloads.append(for_dali(payload))
            labels[k] = int(recordio.first_label(header.label))
        encoded = [np.frombuffer(p, np.uint8) for p in payloads]
        if self.crop is None:
            return (encoded, labels, *self.eval_geometry(payloads))
        # the draws read the headers from the bytes: `b"Exif" in` a numpy array is never true
        return (encoded, labels, *self.draws(items, payloads))

    def eval_geometry(self, encoded):
        """Per sample, torchvision's Resize(shorter) + CenterCrop as the torch backend computes them:
        the resized (width, height), the long side truncated (DALI's resize_shorter rounds it), and the
        crop's corner, rounded half to even (DALI's centre crop rounds half up): a pixel apart otherwise."""
        n, (resize, size) = len(encoded), self.eval_sizes
        shape, anchor = np.empty((n, 2), np.float32), np.empty((n, 2), np.float32)
        crop = np.full((n, 2), size, np.float32)  # an input from here: a CPU input of a GPU slice as well
        for k, payload in enumerate(encoded):
            height, width = image_size(payload)
            short, long = min(height, width), max(height, width)
            scaled = (resize, int(resize * long / short)) if short != resize else (short, long)
            h, w = scaled if height <= width else scaled[::-1]
            shape[k], anchor[k] = (w, h), (int(round((w - size) / 2.0)), int(round((h - size) / 2.0)))
        return shape, anchor, crop

    def draws(self, items, encoded):
        """Per sample, as TrainTransform and RecordDataset draw them: crop start (x, y) and shape
        (w, h), mirror, and with PCA lighting the RGB shift."""
        n = len(items)
        start, shape = np.empty((n, 2), np.int32), np.empty((n, 2), np.int32)
        mirror, shift = np.empty(n, np.int32), np.empty((n, 3), np.float32)
        for k, ((i, epoch, position), payload) in enumerate(zip(items, encoded)):
            try:
                height, width = image_size(payload)
            except Exception as exc:
                raise RuntimeError(f"{self.records.where(i)}: not a readable image ({exc}); "
                                   "use --loader torch (replaces corrupt records) or repair the shard")
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, position))
            top, left, h, w = self.crop.crop_box(height, width, g)
            start[k], shape[k] = (left, top), (w, h)
            mirror[k] = torch.rand(1, generator=g).item() < 0.5
            if self.pca_std:
                g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, position, LIGHTING))
                shift[k] = lighting_shift(self.pca_std, g).numpy()
        return (start, shape, mirror, shift) if self.pca_std else (start, shape, mirror)


def _pipeline(source, train, size, resize, mean, std, gpu, pca, parallel, **kw):
    from nvidia.dali import fn, math, pipeline_def, types

    @pipeline_def(**kw)
    def pipe():
        device = "mixed" if gpu else "cpu"
        extra = dict(parallel=True, prefetch_queue_depth=2) if parallel else {}
        outputs = fn.external_source(source, num_outputs=(5 + pca) if train else 5, batch=True,
                                     batch_info=True, **extra)
        jpegs, labels = outputs[:2]
        if train:
            start, shape, mirror = outputs[2:5]
            images = fn.decoders.image_slice(jpegs, start, shape, device=device, output_type=types.RGB,
                                             normalized_anchor=False, normalized_shape=False)
            images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
            if pca:  # as the torch backend: add the shift, clamp, back to uint8 (truncating)
                shift = fn.reshape(outputs[5].gpu() if gpu else outputs[5], shape=[1, 1, 3])
                images = math.clamp(fn.cast(images, dtype=types.FLOAT) + shift, 0.0, 255.0)
                images = fn.cast(math.floor(images), dtype=types.UINT8)
        else:  # the torch backend's geometry, per sample from the source (BatchSource.eval_geometry)
            shape, anchor, crop = outputs[2:5]
            images = fn.decoders.image(jpegs, device=device, output_type=types.RGB)
            images = fn.resize(images, resize_x=shape[0], resize_y=shape[1], antialias=True)
            images = fn.slice(images, anchor, crop, normalized_anchor=False, normalized_shape=False,
                              out_of_bounds_policy="pad")
            mirror = 0
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", crop=(size, size),
                                          mean=list(mean), std=list(std), mirror=mirror)
        return images, labels
    return pipe()


_OURS = re.compile(r"\S+\.rec key -?\d+ offset \d+: .*")  # BatchSource's own error, inside DALI's text


def dali_reason(exc: Exception) -> str:
    """One line from DALI's error (pages of traceback, C++ context and a worker's traceback): our
    source's own message where it is inside, else the line after DALI's 'encountered:', else the first."""
    text = str(exc)
    ours = _OURS.search(text)
    if ours:
        return ours[0].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    after = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith("encountered:")]
    line = (after or lines or [type(exc).__name__])[0]
    return re.sub(r"^(Error in thread \d+: )?\[[^\]]*\]\s*", "", line)[:300]


def start_method(gpu: bool) -> str:
    """How DALI starts the source's worker processes: a forked worker cannot use CUDA once the parent
    has it (DALI's rule), so spawn on GPUs; fork on the CPU (no imports to repeat)."""
    return "spawn" if gpu else "fork"


class DaliLoader:
    """The loader contract (set_epoch(epoch, start_batch), len, iteration) over a DALI pipeline that
    lives across epochs: rebuilt only when set_epoch does not continue where it stands."""
    backend = "dali"

    def __init__(self, records: RecordSet, batches: RankBatches, image_size, eval_resize, seed, device,
                 workers, mean, std, channels_last=False, dtype=torch.float32, min_scale=0.08, pca_std=0.0,
                 timeout=300.0, what="the data"):
        self.records, self.batches, self.size, self.seed = records, batches, image_size, seed
        self.timeout, self.what, self._watch = timeout, what, None
        self.train, self.device, self.workers, self.mean, self.std = batches.train, device, workers, mean, std
        self.resize = eval_resize_for(image_size, eval_resize)
        self.channels_last, self.dtype, self.pca_std = channels_last, dtype, pca_std if batches.train else 0.0
        self.crop = TrainTransform(image_size, min_scale) if batches.train else None
        self.epoch, self.start = 0, 0
        self._live = None  # [iterator, epoch0, epochs done, reset due]: the pipeline, where it stands

    def __len__(self):
        return len(self.batches)

    @property
    def num_samples(self):
        return self.batches.num_samples

    def set_epoch(self, epoch: int, start_batch: int = 0):
        self.epoch, self.start = epoch, start_batch

    def _build(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
        gpu = self.device.type == "cuda"
        source = BatchSource(self.records, self.batches, self.crop, self.seed, self.pca_std,
                             self.epoch, self.start, (self.resize, self.size))
        parallel = self.workers > 0
        extra = {}
        if parallel:  # one Python worker reads for every 4 decoding threads (reading is ~3% of decoding)
            extra = dict(py_num_workers=max(1, self.workers // 4), py_start_method=start_method(gpu))
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if gpu else None
        with quiet_children():  # the source's workers start here (at build)
            pipe = _pipeline(source, self.train, self.size, self.resize, self.mean, self.std, gpu,
                             bool(self.pca_std), parallel, batch_size=self.batches.batch_size,
                             num_threads=max(1, self.workers), device_id=device_id, prefetch_queue_depth=2,
                             seed=sample_seed(self.seed, 0) % 2 ** 31, **extra)
            pipe.build()
        # DALI's pool of source workers (private: nothing watched where this DALI lays it out otherwise)
        workers = getattr(getattr(getattr(pipe, "_py_pool", None), "pool", None), "_processes", [])
        self._watch = SourceWatch(workers, self.timeout, self.what)
        weakref.finalize(pipe, self._watch.close)  # a pipeline collected unclosed: its workers' end is no news
        with self._watch.waiting():  # the iterator reads the first batch as it starts
            iterator = DALIGenericIterator([pipe], ["images", "labels"], auto_reset=False,
                                           last_batch_policy=LastBatchPolicy.PARTIAL)
        self._live = [iterator, self.epoch, 0, False]

    def _drop(self):
        """The live pipeline goes (its workers with it), and the watch on it."""
        if self._watch is not None:
            self._watch.close()
        self._watch, self._live = None, None

    def _continues(self) -> bool:
        """Does the live pipeline's next epoch begin with (self.epoch, self.start)?"""
        if self._live is None or self.start != 0:
            return False
        return not self.train or self._live[1] + self._live[2] == self.epoch

    def __iter__(self):
        if self.start >= len(self):
            return
        b, finished = self.start, False
        try:
            if not self._continues():
                self._drop()  # the old pipeline and its workers go first
                self._build()
            live = self._live
            if live[3]:  # reset only now: between epochs the pipeline stays idle (no thread busy when,
                with self._watch.waiting():  # say, a DataLoader forks its workers), then prefetches
                    live[0].reset()
                live[3] = False
            while True:
                with self._watch.waiting():
                    out = next(live[0], None)
                if out is None:
                    break
                x, y = out[0]["images"], out[0]["labels"]
                x = x.to(self.device, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                b += 1
                yield x.to(self.dtype), y.view(-1).to(self.device, torch.int64)
            finished = True
        except (Stalled, UserError):
            raise
        except Exception as exc:  # DALI's own (a RuntimeError, or a bare Exception from a source worker)
            self.name_undecodable(b)  # its message names no record: one line that does
            raise Failed(f"DALI stopped while reading {self.what}: {dali_reason(exc)}; --loader torch reads "
                         "the same records without DALI (and names and replaces undecodable ones)") from None
        finally:
            if finished:  # the pipeline goes on with the next epoch
                self._live[2], self._live[3] = self._live[2] + 1, True
            elif self._live is not None:  # abandoned mid-epoch (or failed): rebuilt on the next iteration
                self._drop()

    def name_undecodable(self, b: int):
        """After DALI stopped: a UserError naming the first record of batches b.. (those it was reading
        or prefetching) that OpenCV cannot decode either; nothing when every one decodes."""
        from toolkit.data.decode import decode
        if self.train:
            self.batches.set_epoch(self.epoch)
        for k in range(b, min(b + 8, len(self.batches))):
            for i, _, _ in self.batches.batch(k):
                try:
                    decode(for_dali(recordio.unpack(self.records.read(i))[1]))
                except Exception as exc:
                    raise UserError(f"{self.records.where(i)}: not an image ({exc}); DALI stops on it: "
                                    "--loader torch leaves it out of evaluation (and replaces it in "
                                    "training) and names it, or repair the shard") from None
