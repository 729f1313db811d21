#!/usr/bin/env python3
"""Import an MXNet image-classification model as one of our checkpoints (every tool takes it).

    tools/import_mxnet.py models/resnet-18 --epoch 0 --out checkpoints/resnet-18-mx.pt --classes synset.txt
    tools/import_mxnet.py gluon/resnet50_v1 --epoch 0 --out r50.pt       # a Gluon net.export()

PREFIX-symbol.json + PREFIX-NNNN.params (mx.model.save_checkpoint's arg:/aux: or Gluon's export),
symbol files of any MXNet version. The model returns the logits that fed the softmax head.
"""
import sys

import click

from toolkit.cli import _rgb


@click.command(context_settings={"max_content_width": 100})
@click.argument("prefix")
@click.option("--epoch", type=click.IntRange(min=0), required=True, help="Reads PREFIX-NNNN.params.")
@click.option("--out", required=True, help="The checkpoint to write (.pt).")
@click.option("--output", default=None, metavar="NAME",
              help="Which output of the symbol (NODE or NODE_output); default: the input of its softmax head.")
@click.option("--image-size", type=click.IntRange(min=1), default=224, show_default=True,
              help="The input size the model was trained at.")
@click.option("--mean", callback=_rgb, default=None, metavar="R,G,B",
              help="0-255, as ImageRecordIter's mean_r/g/b; default: what the graph implies.")
@click.option("--std", callback=_rgb, default=None, metavar="R,G,B", help="0-255, as ImageRecordIter's std_r/g/b.")
@click.option("--classes", default=None, metavar="SYNSET",
              help="Class names in label order: synset.txt (each line's first word, the wnid: the "
                   "folder names our classes.tsv holds) or a classes.tsv; default: 0..N-1.")
def main(prefix, epoch, out, output, image_size, mean, std, classes):
    from toolkit.engine import checkpoint
    from toolkit.engine.preflight import writable_file
    from toolkit.mxnet_import.importer import import_mxnet
    writable_file(out, "--out")
    state, _, lines = import_mxnet(prefix, epoch, output, image_size, mean or None, std or None, classes)
    state = {k: v for k, v in state.items() if k != "version"}
    checkpoint.save(out, state)
    print("\n".join(lines + [f"wrote {out}"]))
    sys.exit(0)


if __name__ == "__main__":
    main()
