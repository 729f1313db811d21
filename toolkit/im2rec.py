"""Pack .lst image lists into RecordIO .rec/.idx files, as MXNet's tools/im2rec.py does, faster.

Decode, crop, resize and encode run in worker processes through torchvision.io (libjpeg-turbo)
instead of OpenCV; records are written in list order whatever the worker count, never more than the
in-flight images are held in memory, and every output appears under its final name only when
complete. Beyond MXNet: `num_shards` splits one list into NAME-00000.rec/.idx ..., and the
per-channel RGB mean/std of the stored images is written to NAME.mean_std.json.
"""
import dataclasses
import glob
import json
import multiprocessing as mp
import os
import sys
from typing import List, Optional, Tuple

import numpy as np
import torch
import torchvision.io as tvio
import torchvision.transforms.v2.functional as TF
from tqdm import tqdm

from toolkit import recordio
from toolkit.atomic import atomic_open
from toolkit.errors import UserError
from toolkit.lists import ListItem, read_list

_MODES = {1: tvio.ImageReadMode.RGB, 0: tvio.ImageReadMode.GRAY, -1: tvio.ImageReadMode.UNCHANGED}


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


def _transform(img: torch.Tensor, opts: PackOptions) -> torch.Tensor:
    h, w = img.shape[-2:]
    if opts.center_crop:
        side = min(h, w)
        img = img[..., (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        h = w = side
    if opts.resize:
        # MXNet's integer arithmetic for the long side, so sizes match its records
        size = [h * opts.resize // w, opts.resize] if h > w else [opts.resize, w * opts.resize // h]
        img = TF.resize(img, size, antialias=True)
    return img


def _encode(img: torch.Tensor, opts: PackOptions) -> bytes:
    if opts.encoding == ".png":
        return tvio.encode_png(img, compression_level=opts.quality).numpy().tobytes()
    return tvio.encode_jpeg(img[:3] if img.shape[0] == 4 else img, quality=opts.quality).numpy().tobytes()


_LEVELS = torch.arange(256, dtype=torch.float64)


def _stats(img: torch.Tensor) -> np.ndarray:
    """Per-channel pixel count, sum and sum of squares of a uint8 image (grey counts as RGB)."""
    x = img[:3].reshape(min(img.shape[0], 3), -1)
    # exact, from a 256-bin histogram per channel: twice as fast as int64 sums of squares
    hist = torch.stack([torch.bincount(c, minlength=256) for c in x]).to(torch.float64)
    if len(hist) == 1:
        hist = hist.expand(3, -1)
    return np.concatenate([[x.shape[1]], (hist @ _LEVELS).numpy(), (hist @ _LEVELS ** 2).numpy()])


def _decode(data: bytes, color: int) -> torch.Tensor:
    return tvio.decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=_MODES[color])


def encode_item(job: Tuple[str, ListItem, PackOptions]):
    """Worker: (key, record bytes or None, stats or None, warning or None) for one list item."""
    root, item, opts = job
    path = os.path.join(root, item.path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        if opts.pass_through:  # stored as is; decoded only for the mean/std, if it decodes
            try:
                stats = _stats(_decode(data, opts.color))
            except RuntimeError:
                stats = None
            return item.index, recordio.pack(_header(item, opts), data), stats, None
        img = _transform(_decode(data, opts.color), opts)
        return item.index, recordio.pack(_header(item, opts), _encode(img, opts)), _stats(img), None
    except Exception as exc:  # a bad image is skipped with a warning, never fatal (as in MXNet)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return item.index, None, None, f"warning: skipping unreadable image {path}: {reason}"


def _worker_init():
    torch.set_num_threads(1)  # one process per core; torch's own threads would oversubscribe


def shard_names(name: str, num_shards: int) -> List[str]:
    return [name] if num_shards <= 1 else [f"{name}-{k:05d}" for k in range(num_shards)]


def pack_list(lst_path: str, root: str, opts: PackOptions, out_dir: Optional[str] = None) -> PackResult:
    """Pack one .lst into NAME.rec/.idx (or shards) and NAME.mean_std.json beside it."""
    name = os.path.join(out_dir or os.path.dirname(os.path.abspath(lst_path)),
                        os.path.splitext(os.path.basename(lst_path))[0])
    total = sum(1 for _ in read_list(lst_path))  # validates every line before any work
    names = shard_names(name, opts.num_shards)
    bounds = [total * k // len(names) for k in range(len(names) + 1)]  # records spread evenly
    result = PackResult(lst_path, [n + ".rec" for n in names])
    acc = np.zeros(7)
    jobs = ((root, item, opts) for item in read_list(lst_path))
    pool = mp.get_context("fork").Pool(opts.num_thread, _worker_init) if opts.num_thread > 1 else None
    try:
        results = pool.imap(encode_item, jobs, chunksize=8) if pool else map(encode_item, jobs)
        bar = tqdm(total=total, unit="img", desc=os.path.basename(name), disable=None, file=sys.stderr)
        for shard, shard_name in enumerate(names):
            with recordio.IndexedRecordWriter(shard_name + ".idx", shard_name + ".rec") as writer:
                for _ in range(bounds[shard], bounds[shard + 1]):
                    key, record, stats, warning = next(results)
                    bar.update()
                    if warning:
                        tqdm.write(warning, file=sys.stderr)
                        result.skipped += 1
                        continue
                    writer.write_idx(key, record)
                    if stats is not None:
                        acc += stats
                    result.records += 1
        bar.close()
    finally:
        if pool:
            pool.terminate()
    _write_mean_std(name + ".mean_std.json", acc, result.records)
    return result


def _write_mean_std(path: str, acc: np.ndarray, images: int):
    n = max(acc[0], 1)
    mean = acc[1:4] / n
    std = np.sqrt(np.maximum(acc[4:7] / n - mean ** 2, 0))
    with atomic_open(path) as f:
        json.dump({"mean": [round(v, 4) for v in mean], "std": [round(v, 4) for v in std],
                   "images": images}, f)
        f.write("\n")


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
    return [pack_list(lst, root, opts) for lst in lists]
