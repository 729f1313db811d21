"""`tools/benchmark.py imagenet`: `tools/imagenet.py prepare` from the tar files against
`tools/im2rec.py` packing the same images, unpacked into synset folders, with the same list and
flags (`--resize 256 --quality 95 --num-thread T --num-shards S`), in one invocation.

Rates are differential (as the im2rec benchmark's): each tool packs a small and the full train set,
and rate = (N_full - N_small) / (T_full - T_small), so start-up, the devkit and the fixed val split
cancel out. The tar route's time includes indexing the tar and writing the lists; im2rec's packing
is given the list. Peak memory: the largest RSS of any process of each run (RUSAGE_CHILDREN), for
the small and the full run: bounded memory does not grow with the split.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time

import click

from toolkit.benchmarks.images import imagenet_like_folder
from toolkit.benchmarks.oracle import REPO
from toolkit.errors import UserError
from toolkit.imagenet import fake

_PEAK = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
         "stderr=subprocess.PIPE, text=True); sys.stderr.write(p.stderr[-2000:] if p.returncode else ''); "
         "r = resource.getrusage(resource.RUSAGE_CHILDREN); print(r.ru_maxrss, r.ru_utime + r.ru_stime); "
         "sys.exit(p.returncode)")


def _run(cmd):
    """(seconds, peak RSS in MiB of the largest process, CPU seconds of all its processes) of cmd."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, *cmd], capture_output=True, text=True)
    if proc.returncode:
        raise UserError(f"{os.path.basename(cmd[1])} exited with {proc.returncode}: "
                        f"{(proc.stderr.strip().splitlines() or ['(no output)'])[-1]}")
    rss, cpu = proc.stdout.split()[-2:]
    return time.perf_counter() - t, int(rss) / 1024, float(cpu)


def _imagenet_set(root: str, src: str, n: int, classes: int) -> dict:
    """The first n images of src as ImageNet's train tar and synset folders (hard links), and a small
    val tar with its devkit; made once per n."""
    out = {"train": os.path.join(root, "train"), "train_tar": os.path.join(root, "train.tar"),
           "val": os.path.join(root, "val"), "val_tar": os.path.join(root, "val.tar"),
           "devkit": os.path.join(root, "devkit.tar.gz")}
    if os.path.exists(os.path.join(root, ".complete")):
        return out
    shutil.rmtree(root, ignore_errors=True)
    wnids = [f"n{1440764 + 1000 * c:08d}" for c in range(classes)]
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs if f.endswith(".jpg"))
    for i, path in enumerate(files[:n]):
        w = wnids[i % classes]
        os.makedirs(os.path.join(out["train"], w), exist_ok=True)
        os.link(path, os.path.join(out["train"], w, f"{w}_{i}.JPEG"))
    os.makedirs(out["val"])
    with tarfile.open(out["train_tar"], "w", format=tarfile.USTAR_FORMAT) as outer:
        for w in wnids:  # each synset's tar written, added, removed: no image held in memory
            inner = os.path.join(root, w + ".tar")
            with tarfile.open(inner, "w", format=tarfile.USTAR_FORMAT) as tar:
                for f in sorted(os.listdir(os.path.join(out["train"], w))):
                    tar.add(os.path.join(out["train"], w, f), f)
            outer.add(inner, w + ".tar")
            os.remove(inner)
    val_wnids = [wnids[k % classes] for k in range(2 * classes)]
    with tarfile.open(out["val_tar"], "w", format=tarfile.USTAR_FORMAT) as tar:
        for k in range(len(val_wnids)):
            name = f"ILSVRC2012_val_{k + 1:08d}.JPEG"
            os.link(files[-1 - k], os.path.join(out["val"], name))
            tar.add(os.path.join(out["val"], name), name)
    fake.write_devkit(out["devkit"], wnids[::-1], {w: w for w in wnids}, val_wnids)
    open(os.path.join(root, ".complete"), "w").close()
    return out


def _tar_route(s, out, threads, shards):
    return [os.path.join(REPO, "tools/imagenet.py"), "prepare", "--train", s["train_tar"], "--val", s["val_tar"],
            "--devkit", s["devkit"], "--out", out, "--resize", "256", "--quality", "95",
            "--num-thread", str(threads), "--num-shards", str(shards)]


def _measure(s, work, threads, shards):
    """_run's three figures for the tar route, then for im2rec, for one set."""
    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    tar = _run(_tar_route(s, out, threads, shards))
    ours = os.path.join(work, "im2rec")
    shutil.rmtree(ours, ignore_errors=True)
    os.makedirs(ours)
    shutil.copy(os.path.join(out, "imagenet_train.lst"), ours)
    im = _run([os.path.join(REPO, "tools/im2rec.py"), "--resize", "256", "--quality", "95", "--num-thread",
                       str(threads), "--num-shards", str(shards), os.path.join(ours, "imagenet_train"), s["train"]])
    for k in range(shards):  # the same records, byte for byte
        name = f"imagenet_train-{k:05d}.rec" if shards > 1 else "imagenet_train.rec"
        if open(os.path.join(out, name), "rb").read() != open(os.path.join(ours, name), "rb").read():
            raise UserError(f"{name}: the tar route and im2rec wrote different records")
    return tar + im


@click.command()
@click.option("--images", type=click.IntRange(min=200), default=2000, show_default=True)
@click.option("--classes", type=click.IntRange(min=2), default=10, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--shards", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Measurements per tool, taken in turn; the median is reported.")
@click.option("--data", default="bench-data/imagenet", show_default=True, help="Cache folder.")
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object.")
def cli(images, classes, threads, shards, rounds, data, as_json):
    """Pack ImageNet-like JPEGs (about 500x375) from the tar files and, unpacked, with im2rec; images/s."""
    src = imagenet_like_folder(os.path.join(data, f"src-{images}"), n=images)
    small = max(100, images // 10)
    sets = {n: _imagenet_set(os.path.join(data, f"set-{n}"), src, n, classes) for n in (small, images)}
    times = {n: [] for n in sets}
    for _ in range(rounds):
        for n, s in sets.items():
            times[n].append(_measure(s, os.path.join(data, "work"), threads, shards))
    med = {n: [statistics.median(r[i] for r in rs) for i in range(6)] for n, rs in times.items()}

    def rate(i):  # images per second of wall time (i = 0, 3) or of CPU time (i = 2, 5)
        if med[images][i] <= med[small][i]:  # the machine's load swamped the difference
            raise UserError(f"the full run ({images} images) took no longer than the small one ({small}): the "
                            "machine is too noisy to measure; run again with more --images or --rounds")
        return (images - small) / (med[images][i] - med[small][i])
    result = {"images": images, "threads": threads, "shards": shards, "rounds": rounds,
              "tar_images_per_s": round(rate(0), 1), "im2rec_images_per_s": round(rate(3), 1),
              "ratio_tar_vs_im2rec": round(rate(0) / rate(3), 2),
              "tar_images_per_cpu_s": round(rate(2), 1), "im2rec_images_per_cpu_s": round(rate(5), 1),
              "cpu_ratio_tar_vs_im2rec": round(rate(2) / rate(5), 2),
              "tar_peak_mib_small_full": [round(med[small][1]), round(med[images][1])],
              "im2rec_peak_mib_small_full": [round(med[small][4]), round(med[images][4])]}
    print(f"tar route: {rate(0):8.1f} images/s; im2rec from folders: {rate(3):8.1f} images/s "
          f"({threads} thread(s), {shards} shards, median of {rounds}): {result['ratio_tar_vs_im2rec']:.2f}x")
    print(f"per CPU second (all processes; steadier on a shared machine): tar route {rate(2):.1f}, "
          f"im2rec {rate(5):.1f}: {result['cpu_ratio_tar_vs_im2rec']:.2f}x")
    print(f"peak RSS of the largest process (MiB), {small} / {images} images: tar route "
          f"{result['tar_peak_mib_small_full']}, im2rec {result['im2rec_peak_mib_small_full']}")
    if as_json:
        print(json.dumps(result))
