#!/usr/bin/env python3
"""Export a checkpoint's network for other runtimes, checked against PyTorch before it is written.

    tools/export.py --prefix resnet50 --epoch 90 --format onnx --out resnet50.onnx    # onnxruntime, TensorRT, ...
    tools/export.py --checkpoint checkpoints/resnet50-0090.pt --format exported-program   # torch.export .pt2

Dynamic batch dimension; a JSON beside the file (OUT.json) holds the preprocessing and class names.
"""
import sys

import click

from toolkit.inference.export import FORMATS, default_out, export, require_onnx
from toolkit.engine.model import load_member
from toolkit.inference.meta import resolve
from toolkit.rules import rule


@click.command(context_settings={"max_content_width": 100})
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), required=True,
              help="onnx (torch.onnx dynamo exporter) or exported-program (torch.export, .pt2).")
@click.option("--out", default=None, help="Output file; default: exports/CHECKPOINT.onnx or .pt2.")
@click.option("--prefix", default=None, help="Run name (may be left out when the folder holds one run).")
@click.option("--epoch", "--load-epoch", "epoch", type=rule("epoch").click_type(), default=None,
              help="Export PREFIX-NNNN.pt; default: the newest checkpoint.")
@click.option("--checkpoint", "checkpoint_path", default=None, help="A checkpoint file (instead of --prefix/--epoch).")
@click.option("--checkpoints-dir", default="checkpoints", show_default=True)
@click.option("--data", default=None, help="Dataset folder, for checkpoints older than self-describing ones.")
@click.option("--atol", type=click.FloatRange(min=0), default=1e-3, show_default=True,
              help="Refuse to write when |exported - PyTorch| logits exceed atol + rtol * max |logit|.")
@click.option("--rtol", type=click.FloatRange(min=0), default=1e-3, show_default=True)
def main(fmt, out, prefix, epoch, checkpoint_path, checkpoints_dir, data, atol, rtol):
    from toolkit.engine import checkpoint
    from toolkit.engine.preflight import not_an_input, writable_file
    if fmt == "onnx":
        require_onnx()  # before any work
    if out:
        writable_file(out, "--out")
    if checkpoint_path:
        path = resolve(checkpoint_path)
    else:
        path = checkpoint.find(checkpoints_dir, prefix, epoch)
    if out:
        not_an_input(out, "--out", [path])  # never over the checkpoint it reads
    member = load_member(path, data)
    if not out:
        out = default_out(member, fmt)
        writable_file(out, "--out")
    r = export(member, fmt, out, atol, rtol)
    print(f"{out}: {fmt}, {r['bytes'] / 1e6:.2f} MB, from {path} in {r['seconds']:.1f} s; parity with PyTorch "
          f"on batches of 1 and 3: max |logit error| {r['max_abs_logit_error']:.2e}, max |prob error| "
          f"{r['max_abs_prob_error']:.2e}; preprocessing and classes: {r['json']}")
    sys.exit(0)


if __name__ == "__main__":
    main()
