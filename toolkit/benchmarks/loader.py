"""`tools/benchmark.py loader`: images/s our loaders deliver to the training loop, side by side in one
invocation with (a) DALI's own CPU pipeline over the same shards (readers.mxnet +
decoders.image_random_crop + resize + crop_mirror_normalize), (b) the common PyTorch way
(torchvision ImageFolder + PIL DataLoader over the original JPEGs), and (c) decode-only throughput
of the packed JPEGs on the same number of processes (the ceiling). `--device cuda`: our loaders deliver
to the GPU and DALI, ours and (a), decodes there ("mixed"); `--without a|b|c` leaves a baseline out.

Default data: 2000 generated ImageNet-like JPEGs (about 500x375) packed with `--resize 256`.
"""
import json
import multiprocessing as mp
import os
import time

import click
import torch

from toolkit.benchmarks.images import imagenet_like_folder
from toolkit.data import build_loader, dali_available, open_split
from toolkit.data.discovery import IMAGENET_MEAN, IMAGENET_STD

MEAN, STD = list(IMAGENET_MEAN), list(IMAGENET_STD)


def default_dataset(root: str, n: int):
    """bench-data/loader: the JPEG folder and its train shards (built once)."""
    from toolkit.im2rec import PackOptions, pack_list
    from toolkit.lists import make_lists
    src = imagenet_like_folder(os.path.join(root, f"src-{n}"), n=n)
    data = os.path.join(root, f"packed-{n}")
    if not os.path.exists(os.path.join(data, "bench_train.idx")):
        os.makedirs(data, exist_ok=True)
        lst = make_lists(os.path.join(data, "bench_train"), src, recursive=True)[0]
        print(f"packing {n} images with --resize 256 into {data} (once)", flush=True)
        pack_list(lst, src, PackOptions(resize=256, quality=95, num_thread=os.cpu_count() or 1))
    return src, data


class Timed:
    """An endless batch stream, measured in slices: images and seconds add up over the slices.
    The first two batches (start-up, worker spawn) are not measured."""

    def __init__(self, batches, count):
        self.it, self.count, self.images, self.seconds = iter(batches), count, 0, 0.0
        for _ in range(2):
            next(self.it)

    def run(self, seconds: float, settle: float = 1.0):
        """Measure for `seconds`, after `settle` unmeasured seconds that drain what the loader
        prefetched while the others ran (torch: workers x prefetch_factor batches)."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < settle:
            next(self.it)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            self.images += self.count(next(self.it))
        self.seconds += time.perf_counter() - t0

    @property
    def rate(self) -> float:
        return self.images / max(self.seconds, 1e-9)


class Epochs:
    """Endless iteration over a loader's epochs (the contract: set_epoch, then iterate)."""

    def __init__(self, loader):
        self.loader, self.epoch = loader, 0

    def __iter__(self):
        while True:
            self.loader.set_epoch(self.epoch)
            yield from self.loader
            self.epoch += 1


def _count(device):
    """Images in a batch, once the device has finished it (a GPU batch is queued, not done, when
    it is handed over)."""
    if device == "cuda":
        return lambda n: (torch.cuda.synchronize(), n)[1]
    return lambda n: n


def ours(data, split, backend, batch_size, image_size, workers, device="cpu"):
    loader = build_loader(data, split, train=True, batch_size=batch_size, image_size=image_size,
                          backend=backend, workers=workers, device=torch.device(device))
    count = _count(device)
    return Timed(Epochs(loader), lambda b: count(len(b[1])))


def dali_pipeline(data, split, batch_size, image_size, workers, device="cpu"):
    """(a) DALI's own pipeline, as its documentation writes it: on the CPU, or with --device cuda
    the JPEG decode on the GPU ("mixed") and the rest there too."""
    from nvidia.dali import fn, pipeline_def, types
    from toolkit.data.dali_backend import combined_index  # DALI takes one .idx for all shards
    records = open_split(data, split)
    recs, idx = [rec for rec, _ in records.files], combined_index(records)

    gpu = device == "cuda"

    @pipeline_def(batch_size=batch_size, num_threads=workers, device_id=0 if gpu else None, seed=0)
    def pipe():
        jpegs, labels = fn.readers.mxnet(path=recs, index_path=[idx], random_shuffle=True, name="r")
        images = fn.decoders.image_random_crop(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        images = fn.resize(images, resize_x=image_size, resize_y=image_size)
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mean=MEAN, std=STD,
                                          mirror=fn.random.coin_flip(probability=0.5))
        return images, labels

    p = pipe()
    p.build()

    def batches():
        while True:
            yield p.run()
    count = _count(device)
    return Timed(batches(), lambda out: count(len(out[1])))


def imagefolder(src, batch_size, image_size, workers):
    """(b) torchvision ImageFolder + PIL + DataLoader over the original JPEG files."""
    import torchvision.datasets as datasets
    import torchvision.transforms as T
    tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = datasets.ImageFolder(src, tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)

    def batches():
        while True:
            yield from loader
    return Timed(batches(), lambda b: len(b[1]))


def _decode_share(args):
    data, split, rank, world, seconds = args
    import torchvision.io as tvio
    from toolkit import recordio
    torch.set_num_threads(1)
    records = open_split(data, split)
    payloads = [recordio.unpack(records.read(i))[1] for i in range(rank, len(records), world)]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for p in payloads:
            tvio.decode_jpeg(torch.frombuffer(bytearray(p), dtype=torch.uint8))
            n += 1
    return n, time.perf_counter() - t0


def decode_only(data, split, workers, seconds):
    """(c) libjpeg-turbo decode of the packed JPEGs, `workers` processes (bytes already in memory)."""
    procs = max(workers, 1)
    with mp.get_context("fork").Pool(procs) as pool:
        done = pool.map(_decode_share, [(data, split, r, procs, seconds) for r in range(procs)])
    return sum(n for n, _ in done) / max(t for _, t in done)


@click.command()
@click.option("--data", default=None, help="Dataset folder; default: 2000 generated JPEGs packed at --resize 256.")
@click.option("--split", default="train", show_default=True)
@click.option("--backend", type=click.Choice(["dali", "torch", "auto", "both"]), default="both", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--image-size", type=click.IntRange(min=16), default=224, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Loader workers / DALI threads / decode processes.")
@click.option("--seconds", type=click.FloatRange(min=1), default=10.0, show_default=True, help="Measured time per loader.")
@click.option("--images", type=click.IntRange(min=200), default=2000, show_default=True,
              help="Generated images (without --data).")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also measure (a) DALI's pipeline, (b) ImageFolder+PIL, (c) decode only.")
@click.option("--rounds", type=click.IntRange(min=1), default=4, show_default=True,
              help="Slices per loader, taken in turn.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where our loaders deliver batches; cuda: DALI decodes on the GPU (mixed), ours and (a).")
@click.option("--without", type=click.Choice(["a", "b", "c"]), multiple=True,
              help="Leave out a baseline (repeatable).")
@click.option("--cache", default="bench-data/loader", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object.")
def cli(data, split, backend, batch_size, image_size, workers, seconds, images, baselines, rounds, device,
        without, cache, as_json):
    """Images/s delivered by our loaders, with DALI's pipeline, ImageFolder and decode-only beside them."""
    src = None
    if data is None:
        src, data = default_dataset(cache, images)
    result = {"data": data, "records": len(open_split(data, split)), "batch_size": batch_size,
              "image_size": image_size, "workers": workers, "cpus": os.cpu_count(), "device": device}
    backends = (["torch", "dali"] if dali_available() else ["torch"]) if backend == "both" else [backend]
    streams = {b: ours(data, split, b, batch_size, image_size, workers, device) for b in backends}
    if baselines and dali_available() and "a" not in without:
        streams["a_dali_pipeline"] = dali_pipeline(data, split, batch_size, image_size, max(workers, 1), device)
    if baselines and src and "b" not in without:
        streams["b_imagefolder_pil"] = imagefolder(src, batch_size, image_size, workers)
    # round robin in short slices, so machine noise spreads over all of them; idle loaders hold
    # their prefetched batches and use no CPU meanwhile
    for r in range(rounds):
        for stream in (streams.values() if r % 2 == 0 else reversed(list(streams.values()))):
            stream.run(seconds / rounds)
    rates = {name: stream.rate for name, stream in streams.items()}
    labels = {"a_dali_pipeline": "(a) DALI CPU pipeline", "b_imagefolder_pil": "(b) ImageFolder + PIL"}
    for name, rate in rates.items():
        print(f"{labels.get(name, 'ours, ' + name + ' backend'):24s} {rate:8.1f} images/s", flush=True)
    if baselines and "c" not in without:
        rates["c_decode_only"] = decode_only(data, split, workers, seconds)
        print(f"{'(c) decode only':24s} {rates['c_decode_only']:8.1f} images/s", flush=True)
    main = backends[0]
    result.update({"backend": main, "images_per_sec": round(rates[main], 1),
                   **{f"{k}_per_sec": round(v, 1) for k, v in rates.items()}})
    if "c_decode_only" in rates:
        result["decode_only_per_sec"] = round(rates["c_decode_only"], 1)
    for b in backends:
        for base in ("a_dali_pipeline", "b_imagefolder_pil", "c_decode_only"):
            if base in rates:
                result[f"ratio_{b}_vs_{base[:1]}"] = round(rates[b] / rates[base], 2)
                print(f"{b} / ({base[:1]}): {result[f'ratio_{b}_vs_{base[:1]}']:.2f}x")
    if as_json:
        print(json.dumps(result))
