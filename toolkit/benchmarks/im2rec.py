"""`tools/benchmark.py im2rec`: our packer against MXNet 1.9.1's own tools/im2rec.py, same folder,
same options (`--resize 256 --quality 95`), same thread counts, in one invocation.

The steady packing rate is measured differentially: each tool packs a small list and the full list,
and rate = (N_full - N_small) / (T_full - T_small), so interpreter start-up and imports cancel out.
"""
import json
import os
import shutil
import statistics
import sys

import click

from toolkit.benchmarks.images import imagenet_like_folder
from toolkit.benchmarks.oracle import MXNET_PYTHON, REPO, mxnet_tool, timed_run
from toolkit.lists import make_lists, read_list, write_list



def _rate(tool_cmd, src: str, work: str, lists_by_n: dict, threads: int) -> float:
    times = {}
    for n, lst in lists_by_n.items():
        # "small" and "full": neither is a prefix of the other (im2rec packs every PREFIX*.lst)
        prefix = os.path.join(work, "run", "small" if n == min(lists_by_n) else "full")
        shutil.copy(lst, prefix + ".lst")
        times[n] = timed_run(tool_cmd + ["--resize", "256", "--quality", "95", "--num-thread",
                                      str(threads), prefix, src])
        for ext in (".rec", ".idx"):
            os.remove(prefix + ext)
    (small, t_small), (big, t_big) = sorted(times.items())
    return (big - small) / max(t_big - t_small, 1e-9)


def _thread_counts(ctx, param, value):
    try:
        counts = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"{value!r}: expected thread counts like 1,2")
    return counts


@click.command()
@click.option("--images", type=click.IntRange(min=200), default=2000, show_default=True)
@click.option("--threads", default="1,2", show_default=True, callback=_thread_counts,
              help="Comma-separated thread counts.")
@click.option("--data", default="bench-data/im2rec", show_default=True, help="Cache folder.")
@click.option("--mxnet-python", default=MXNET_PYTHON, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Measurements per tool and thread count, taken in turn; the median is reported.")
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object.")
def cli(images, threads, data, mxnet_python, rounds, as_json):
    """Pack ImageNet-like JPEGs (about 500x375) with ours and MXNet's im2rec; print images/s."""
    mx_tool = mxnet_tool(mxnet_python, "im2rec.py")
    src = imagenet_like_folder(os.path.join(data, f"src-{images}"), n=images)
    work = os.path.join(data, "work")
    os.makedirs(os.path.join(work, "run"), exist_ok=True)
    make_lists(os.path.join(work, "all"), src, recursive=True)
    items = list(read_list(os.path.join(work, "all.lst")))
    small = max(50, images // 10)
    write_list(os.path.join(work, "small.lst"), items[:small])
    lists_by_n = {small: os.path.join(work, "small.lst"), len(items): os.path.join(work, "all.lst")}
    tools = {"ours": [sys.executable, os.path.join(REPO, "tools/im2rec.py")],
             "mxnet": [mxnet_python, mx_tool]}
    result = {"images": len(items), "rounds": rounds}
    counts = threads
    # every tool and thread count once per round, in turn: machine noise spreads over all of them
    rates = {(name, t): [] for t in counts for name in tools}
    for _ in range(rounds):
        for (name, t), got in rates.items():
            got.append(_rate(tools[name], src, work, lists_by_n, t))
    for t in counts:
        for name in tools:
            result[f"{name}_{t}t"] = round(statistics.median(rates[name, t]), 1)
            spread = ", ".join(f"{r:.0f}" for r in rates[name, t])
            print(f"{name:5s} {t} thread(s): {result[f'{name}_{t}t']:8.1f} images/s (median of {spread})")
        result[f"ratio_ours_vs_mxnet_{t}t"] = round(result[f"ours_{t}t"] / result[f"mxnet_{t}t"], 2)
        print(f"ours / mxnet at {t} thread(s): {result[f'ratio_ours_vs_mxnet_{t}t']:.2f}x")
    ts = sorted(counts)
    if len(ts) > 1:
        result["ours_scaling"] = round(result[f"ours_{ts[-1]}t"] / result[f"ours_{ts[0]}t"], 2)
        print(f"ours {ts[-1]} threads / {ts[0]} thread: {result['ours_scaling']:.2f}x")
    if as_json:
        print(json.dumps(result))
