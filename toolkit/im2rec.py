"""Pack .lst image lists into RecordIO .rec/.idx files, as MXNet's tools/im2rec.py does, faster.

Decode, crop, resize and encode run in worker processes with OpenCV (libjpeg-turbo) and MXNet's
decode flags and encoder settings; records are written in list order whatever the worker count,
never more than the in-flight images are held in memory, and every output appears under its final
name only when complete. Beyond MXNet: `num_shards` splits one list into NAME-00000.rec/.idx ...,
and the per-channel RGB mean/std of the stored images, the record count and the shard set are
written to NAME.mean_std.json; a packing replaces every file an earlier packing of the list wrote
(toolkit/shards.py).
"""
import collections
import contextlib
import dataclasses
import glob
import itertools
import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import List, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from toolkit import imageops, recordio, shards
from toolkit.errors import Stalled, UserError, hard_exit
from toolkit.lists import ListItem, read_list
from toolkit.shards import shard_names

@dataclasses.dataclass(frozen=True)
class PackOptions:
    resize: int = 0              # shorter side to this many pixels (0: keep)
    center_crop: bool = False    # square centre crop before the resize
    quality: int = 95            # JPEG quality, or PNG compression level 1-9
    encoding: str = ".jpg"
    pass_through: bool = False   # store the file bytes unchanged
    pack_label: bool = False     # store every label of multi-label lines
    color: int = 1               # 1 colour, 0 grayscale, -1 unchanged
    num_thread: int = 1
    num_shards: int = 1
    rgb_jpeg: bool = False       # with pass_through: odd files (PNG, CMYK, grey) re-encoded as RGB JPEGs


@dataclasses.dataclass
class PackResult:
    list_path: str
    outputs: List[str]
    records: int = 0
    skipped: int = 0


def _header(item: ListItem, opts: PackOptions):
    label = np.array(item.labels, np.float32) if opts.pack_label and len(item.labels) > 1 \
        else item.labels[0]
    return (0, label, item.index, 0)


def _transform(img: np.ndarray, opts: PackOptions) -> np.ndarray:
    h, w = img.shape[:2]
    if opts.center_crop:
        side = min(h, w)
        img = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        h = w = side
    if opts.resize:
        # MXNet's integer arithmetic for the long side, so sizes match its records
        size = (h * opts.resize // w, opts.resize) if h > w else (opts.resize, w * opts.resize // h)
        # MXNet's bilinear for mild shrinks (500x375 -> 256: 0.23 ms; OpenCV's area averaging at such
        # fractional factors costs 0.95 ms), area averaging from 2x, where bilinear would skip pixels
        img = imageops.resize(img, *size, area_from=2.0)
    return img


def _encode(img: np.ndarray, opts: PackOptions) -> bytes:
    """As MXNet's recordio.pack_img: OpenCV's encoder, BGR(A) in, its quality/compression flag."""
    if opts.encoding == ".png":
        # MXNet passes --quality (default 95) as is; OpenCV takes 0-9, clamps, and warns per image
        level = min(max(opts.quality, 0), 9)
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, level])
    else:
        img = _no_alpha(img)  # JPEG has none
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, opts.quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {img.shape} {img.dtype} image as {opts.encoding}")
    return buf.tobytes()


def _no_alpha(img: np.ndarray) -> np.ndarray:
    """BGRA -> BGR, grey + alpha -> grey."""
    return img[:, :, :img.shape[2] - 1] if img.ndim == 3 and img.shape[2] in (2, 4) else img


def _stats(img: np.ndarray) -> np.ndarray:
    """Per-channel pixel count, sum and sum of squares, RGB order, of a BGR(A) or grey image (grey
    counts as RGB): OpenCV's one-pass mean and standard deviation (double accumulators)."""
    mean, std = (v[:, 0] for v in cv2.meanStdDev(_no_alpha(img)))
    mean, std = (np.resize(v[::-1], 3) for v in (mean, std))  # BGR -> RGB; grey -> 3 x grey
    n = img.shape[0] * img.shape[1]
    return np.concatenate([[n], mean * n, (std ** 2 + mean ** 2) * n])


def _decode(data: bytes, color: int) -> np.ndarray:
    """As MXNet's im2rec (cv2.imread(path, color)): 1 BGR, 0 grey, -1 unchanged; EXIF orientation
    applied for 1 and 0, as OpenCV does."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), color)
    if img is None:
        raise RuntimeError("not an image OpenCV can decode")
    return img


def _needs_rgb_jpeg(data: bytes) -> bool:
    """Not a baseline 3-component JPEG: a PNG or other format under a .JPEG name, a CMYK or a grey JPEG
    (ImageNet's odd files; DALI's GPU decoder reads only 3-component JPEGs reliably)."""
    return kind_of(data) != "rgb"


def kind_of(data: bytes) -> str:
    """'rgb', 'cmyk', 'grayscale' (JPEGs by their frame header's component count), 'png' or 'other'."""
    if data[:2] != b"\xff\xd8":
        return "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "other"
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return "other"
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xFF:  # a fill byte
            pos += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            comps = data[pos + 9] if pos + 9 < len(data) else 0
            return {1: "grayscale", 3: "rgb", 4: "cmyk"}.get(comps, "other")
        pos += 2 + length
    return "other"


def encode_bytes(data: bytes, item: ListItem, opts: PackOptions) -> Tuple[bytes, Optional[np.ndarray]]:
    """(record, stats or None) of one image's file bytes; raises if it must be skipped."""
    if opts.pass_through and not (opts.rgb_jpeg and _needs_rgb_jpeg(data)):
        # stored as is; decoded only for the mean/std (with rgb_jpeg: it must decode, or it is skipped)
        try:
            stats = _stats(_decode(data, opts.color))
        except (RuntimeError, cv2.error):
            if opts.rgb_jpeg:
                raise
            stats = None
        return recordio.pack(_header(item, opts), data), stats
    img = _decode(data, opts.color)
    if opts.pass_through:  # an odd file under rgb_jpeg: re-encoded as it is, no resize
        return recordio.pack(_header(item, opts), _encode(img, opts)), _stats(img)
    img = _transform(img, opts)
    return recordio.pack(_header(item, opts), _encode(img, opts)), _stats(img)


def skip_warning(where: str, exc: Exception) -> str:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"warning: skipping unreadable image {where}: {reason}"


def encode_item(job: Tuple[str, ListItem, PackOptions]):
    """Worker: (key, record bytes or None, stats or None, warning or None) for one list item."""
    root, item, opts = job
    path = os.path.join(root, item.path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        return (item.index, *encode_bytes(data, item, opts), None)
    except Exception as exc:  # a bad image is skipped with a warning, never fatal (as in MXNet)
        return item.index, None, None, skip_warning(path, exc)


def _one_core():
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe


def _worker_init():
    _one_core()
    # Ctrl-C (the whole process group) ends a worker at once; Python's KeyboardInterrupt would only
    # end its current chunk, and the executor would start the next (measured: 10 s to stop)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _encode_chunk(jobs, fn=None):
    return [(fn or encode_item)(job) for job in jobs]


def _encoded(jobs, processes: int, chunk: int = 8, fn=None):
    """encode_item over `jobs`, in list order: in this process for one thread, else in `processes`
    worker processes with at most 4 chunks each in flight, so memory stays bounded whatever the
    list's length. concurrent.futures rather than multiprocessing.Pool.imap: Pool's worker-handler
    thread wakes on every result waiting in its pipe and spun for 20% of a core while packing
    (measured: 2 processes 1122-1144 against 984-1042 images/s, tools/benchmark.py im2rec's images)."""
    if processes <= 1:
        yield from map(fn or encode_item, jobs)
        return
    # Forked (all at once, at the first submit: quick, and no worker still starting when Ctrl-C
    # ends the pool). A fork copies OpenCV's thread pool in a broken state, and cv2.setNumThreads in
    # the child then deadlocks (OpenCV 5.x): one thread here first leaves no pool to copy (the
    # caller restores the count; this process only writes records meanwhile).
    _one_core()
    executor = ProcessPoolExecutor(processes, mp_context=mp.get_context("fork"), initializer=_worker_init)
    try:
        pending = collections.deque()
        for batch in iter(lambda: list(itertools.islice(jobs, chunk)), []):
            pending.append(executor.submit(_encode_chunk, batch, fn))
            if len(pending) >= 4 * processes:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    except BrokenProcessPool:  # a packer killed (the OOM killer, a kill -9): one line, not a traceback
        raise Stalled("a packer process died (killed: the machine's memory? dmesg names the OOM killer); the "
                      "record files being written were removed: run again, with a lower --num-thread") from None
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def interrupted_exit(message: str):
    """A Ctrl-C's last line, then exit 130 at once, the packers ended first: a packer killed in the
    middle of a message leaves the pool's result pipe half written, and the interpreter's exit would
    join concurrent.futures' reader thread on it without end (seen once, --num-thread 2)."""
    print(message, file=sys.stderr, flush=True)
    packers = mp.active_children()
    if not packers:  # packed in this process (--num-thread 1): nothing to hang on
        sys.exit(130)
    for proc in packers:
        proc.kill()
    for proc in packers:
        proc.join(timeout=5)
    hard_exit(130)


def shard_bounds(total: int, num_shards: int) -> List[int]:
    """First item of each shard, then `total`: records spread evenly."""
    n = len(shard_names("x", num_shards))
    return [total * k // n for k in range(n + 1)]


@dataclasses.dataclass
class ShardResult:
    shard: int
    records: int = 0
    skipped: int = 0
    acc: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(7))
    kinds: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    warnings: List[str] = dataclasses.field(default_factory=list)
    staged: List[Tuple[str, str]] = dataclasses.field(default_factory=list)  # [(temp path, final path)]


def pack_jobs(jobs, total: int, name: str, opts: PackOptions, fn=None, first_shard: int = 0):
    """Encode `jobs` (the items of shards first_shard.. of a list of `total`, in order) with `fn`
    (default encode_item) and write NAME[-K].rec/.idx under temp names; yield a ShardResult once each
    shard is complete, its files in `staged` for the caller to rename (toolkit/shards.py). A result
    may carry a fifth field, the image's kind, counted per shard."""
    names = shard_names(name, opts.num_shards)
    bounds = shard_bounds(total, opts.num_shards)
    cv_threads = cv2.getNumThreads()
    if opts.num_thread <= 1:
        _one_core()  # --num-thread 1 means one core
    results = _encoded(jobs, opts.num_thread, fn=fn)
    try:
        bar = tqdm(total=total, initial=bounds[first_shard], unit="img", desc=os.path.basename(name),
                   disable=None, file=sys.stderr, smoothing=0.05)
        for shard in range(first_shard, len(names)):
            done = ShardResult(shard)
            with recordio.IndexedRecordWriter(names[shard] + ".idx", names[shard] + ".rec") as writer:
                for _ in range(bounds[shard], bounds[shard + 1]):
                    key, record, stats, warning, *kind = next(results)
                    bar.update()
                    done.kinds.update(kind)
                    if warning:
                        tqdm.write(warning, file=sys.stderr)
                        done.warnings.append(warning)
                        done.skipped += 1
                        continue
                    writer.write_idx(key, record)
                    if stats is not None:
                        done.acc += stats
                    done.records += 1
                done.staged = writer.finish()
            yield done
        bar.close()
    finally:
        results.close()  # stops the worker processes, also on an error or Ctrl-C
        cv2.setNumThreads(cv_threads)


def pack_list(lst_path: str, root: str, opts: PackOptions, out_dir: Optional[str] = None) -> PackResult:
    """Pack one .lst into NAME.rec/.idx (or shards) and NAME.mean_std.json beside it; the new files
    replace every file an earlier packing of NAME wrote, at once (toolkit/shards.py)."""
    name = os.path.join(out_dir or os.path.dirname(os.path.abspath(lst_path)),
                        os.path.splitext(os.path.basename(lst_path))[0])
    total = sum(1 for _ in read_list(lst_path))  # validates every line before any work
    names = shard_names(name, opts.num_shards)
    result = PackResult(lst_path, [n + ".rec" for n in names])
    staged: List[Tuple[str, str]] = []  # complete shards under their temp names
    acc = np.zeros(7)
    try:
        for done in pack_jobs(((root, item, opts) for item in read_list(lst_path)), total, name, opts):
            staged += done.staged
            result.records += done.records
            result.skipped += done.skipped
            acc += done.acc
        if result.skipped and not result.records:  # nothing to train on: no files, and say so
            raise UserError(f"{lst_path}: none of its {result.skipped} images could be read (warnings above); "
                            f"is {root} the folder the list was made from?")
        shards.commit(name, staged, mean_std(acc, result.records))
        staged = []
    finally:
        for tmp, _ in staged:  # an error or Ctrl-C before the commit: the earlier packing stays as it was
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    return result


def mean_std(acc: np.ndarray, images: int) -> dict:
    n = max(acc[0], 1)
    mean = acc[1:4] / n
    std = np.sqrt(np.maximum(acc[4:7] / n - mean ** 2, 0))
    return {"mean": [round(v, 4) for v in mean], "std": [round(v, 4) for v in std], "images": images}


def pack_prefix(prefix: str, root: str, opts: PackOptions) -> List[PackResult]:
    """Pack every PREFIX*.lst (MXNet's pack mode); a prefix that is a folder packs all its lists."""
    pattern = os.path.join(prefix, "*.lst") if os.path.isdir(prefix) else prefix + "*.lst"
    lists = sorted(glob.glob(pattern))
    if not lists:
        raise UserError(f"no list file matches {pattern}; make one with: "
                        f"tools/im2rec.py --list --recursive {prefix} {root}")
    if not os.path.isdir(root):
        raise UserError(f"{root}: image folder not found")
    if opts.encoding not in (".jpg", ".png"):
        raise UserError(f"--encoding {opts.encoding}: use .jpg or .png")
    if opts.encoding == ".jpg" and not opts.pass_through and not 1 <= opts.quality <= 100:
        raise UserError(f"--quality {opts.quality}: JPEG quality runs from 1 to 100 (MXNet's default: 95)")
    return [pack_list(lst, root, opts) for lst in lists]
