"""`tools/benchmark.py parse-log`: our log parser (toolkit.logparse, batch rows included) against
MXNet 1.9.1's own tools/parse_log.py on the same generated Module-era log, in one invocation.

The log is MXNet 1.9.1's shape: `INFO:root:` prefix, Speedometer lines with three metrics, then
Train-/Time cost/Saved checkpoint/Validation- lines per epoch. Repeats are interleaved (ours,
theirs, ours, ...) so that page cache and machine load fall on both alike; the best time of each
is reported. MXNet's script runs as a subprocess with its default metric (`accuracy`) and
`--format none`; its time includes its interpreter start-up (10-20 ms: it imports no MXNet). Ours
does more: every Speedometer line into the batch table, and every metric of the epoch lines.
"""
import json
import os
import random
import tempfile
import time

import click

from toolkit.benchmarks.oracle import MXNET_PYTHON, mxnet_tool, timed_run
from toolkit.logparse import parse_logs

METRICS = ("accuracy", "top_k_accuracy_5", "cross-entropy")


def _epoch_lines(epoch: int, batches: int, every: int, rnd: random.Random):
    if epoch % 30 == 0:  # a step schedule (FactorScheduler logs its changes)
        yield f"INFO:root:Update[{epoch * batches}]: Change learning rate to {0.1 ** (1 + epoch // 30):0.5e}\n"
    for last in range(every, batches + 1, every):
        vals = "\t".join(f"{m}={rnd.random():f}" for m in METRICS)
        yield (f"INFO:root:Epoch[{epoch}] Batch [{last - every}-{last}]\t"
               f"Speed: {rnd.uniform(500, 3000):.2f} samples/sec\t{vals}\n")
    for m in METRICS:
        yield f"INFO:root:Epoch[{epoch}] Train-{m}={rnd.random():f}\n"
    yield f"INFO:root:Epoch[{epoch}] Time cost={rnd.uniform(100, 900):.3f}\n"
    yield f'INFO:root:Saved checkpoint to "checkpoints/resnet-50-{epoch + 1:04d}.params"\n'
    for m in METRICS:
        yield f"INFO:root:Epoch[{epoch}] Validation-{m}={rnd.random():f}\n"


def make_module_log(path: str, mb: float, batches_per_epoch: int = 5000, every: int = 20):
    """Write a Module-API log of about `mb` megabytes; return (bytes, epochs, Speedometer lines)."""
    rnd, target, size, epoch = random.Random(0), mb * 1e6, 0, 0
    with open(path, "w") as f:
        f.write("INFO:root:start with arguments Namespace(batch_size=256, network='resnet')\n")
        while size < target:
            chunk = "".join(_epoch_lines(epoch, batches_per_epoch, every, rnd))
            f.write(chunk)
            size += len(chunk)
            epoch += 1
    return os.path.getsize(path), epoch, epoch * (batches_per_epoch // every)


def _time_ours(path: str, epochs: int, rows: int) -> float:
    t = time.perf_counter()
    parsed = parse_logs([path], batches=True)
    took = time.perf_counter() - t
    if (len(parsed.epochs), len(parsed.batches)) != (epochs, rows) or parsed.epochs.isna().any().any():
        raise click.ClickException(f"parsed {len(parsed.epochs)} epochs and {len(parsed.batches)} "
                                   f"batch lines, expected {epochs} and {rows}")
    return took


@click.command()
@click.option("--mb", type=click.FloatRange(min=0.1), default=100.0, show_default=True,
              help="Size of the generated log in megabytes.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--mxnet-python", default=MXNET_PYTHON, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object.")
def cli(mb, repeats, mxnet_python, as_json):
    """Parse a generated MXNet log with ours and MXNet's parse_log.py; print seconds and the ratio."""
    mx_tool = mxnet_tool(mxnet_python, "parse_log.py")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "module.log")
        size, epochs, rows = make_module_log(path, mb)
        with open(path, "rb") as f:
            print(f"log: {size / 1e6:.1f} MB, {sum(1 for _ in f):,d} lines", flush=True)
        ours, theirs = [], []
        for r in range(repeats):
            ours.append(_time_ours(path, epochs, rows))
            theirs.append(timed_run([mxnet_python, mx_tool, "--format", "none", path]))
            print(f"repeat {r + 1}: ours {ours[-1]:.3f} s, mxnet {theirs[-1]:.3f} s", flush=True)
    result = {"mb": round(size / 1e6, 1), "ours_s": round(min(ours), 3), "mxnet_s": round(min(theirs), 3)}
    result["ratio"] = round(result["mxnet_s"] / result["ours_s"], 2)
    print(f"best of {repeats}: ours {result['ours_s']:.3f} s, mxnet {result['mxnet_s']:.3f} s; "
          f"ours is {result['ratio']:.2f}x as fast (mxnet_s / ours_s)")
    if as_json:
        print(json.dumps(result))
