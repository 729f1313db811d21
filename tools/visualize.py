#!/usr/bin/env python3
"""See inside a trained network: one PNG per question (and a CSV beside it where there are numbers).

    tools/visualize.py errors --prefix toy_resnet18                 # most confident mistakes, val split
    tools/visualize.py gradcam --split val --count 16               # CAM / Grad-CAM at the last block
    tools/visualize.py occlusion --count 8 --patch 8 --stride 4     # cover a patch, watch the score
    tools/visualize.py activations --list-layers                    # layer names and output shapes
    tools/visualize.py activations --layers layers.0,layers.3 data/toy/images/star/star_0001.jpg
    tools/visualize.py filters --classes all                        # first-layer kernels + class images
    tools/visualize.py confusion --csv logs/toy_resnet18-0012-val-confusion.csv
    tools/visualize.py augment --count 4 --times 7                  # the training transform, 7 epochs

Images: files, folders, .lst lists (paths relative to the list's folder or --image-root), or, with
none given, --count records spread over --split of the run's dataset (--data to change it).
Checkpoint: --prefix/--epoch as tools/evaluate.py (default: the newest in --checkpoints-dir).
"""
import functools
import os

import click

from toolkit.engine.preflight import not_an_input, writable_file
from toolkit.errors import UserError
from toolkit.rules import rule
from toolkit.visualize import augment as augment_mod
from toolkit.visualize import figures, filters as filters_mod, heatmaps, layers, mistakes
from toolkit.visualize.images import gather
from toolkit.visualize.run import load_run

_RUN_OPTIONS = [
    click.option("--prefix", default=None, help="Run name (may be left out when the folder holds one run)."),
    click.option("--epoch", "--load-epoch", "epoch", type=rule("epoch").click_type(), default=None,
                 help="Use PREFIX-NNNN.pt; default: the newest checkpoint."),
    click.option("--checkpoints-dir", default="checkpoints", show_default=True),
    click.option("--out-dir", "--logs-dir", "logs_dir", default=None,
                 help="Where the PNG and CSV go (without --out); default: the run's logs folder."),
    click.option("--data", default=None, help="Dataset folder; default: the one the run trained on."),
    click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto."),
    click.option("--out", default=None, metavar="PNG",
                 help="The figure (default: LOGS/PREFIX-NNNN-COMMAND.png); a CSV goes beside it."),
    click.option("--cols", type=click.IntRange(min=1), default=8, show_default=True, help="Cells per row."),
    click.option("--batch-size", type=rule("batch_size").click_type(), default=32, show_default=True),
]
_IMAGE_OPTIONS = [
    click.argument("images", nargs=-1, type=click.Path()),
    click.option("--split", default=None, help="Split to take records from when no IMAGES are given."),
    click.option("--count", type=click.IntRange(min=1), default=None,
                 help="Images to use, spread evenly over the split (or over IMAGES)."),
    click.option("--image-root", "--root", "image_root", default=None,
                 help="Folder the paths of a .lst are relative to (default: the list's)."),
]


def _options(*groups):
    def wrap(fn):
        for group in reversed(groups):
            for opt in reversed(group):
                fn = opt(fn)
        return fn
    return wrap


def _run(p):
    return load_run(p["checkpoints_dir"], p["prefix"], p["epoch"], p["data"], p["device"])


def _samples(run, p, default_count, default_split=None):
    count = p["count"] if p["count"] is not None else default_count
    split = p["split"] or default_split or run.cfg.val_split
    return gather(p["images"], run.data, split, count, run.class_names, p["image_root"])


def _write(run, p, command, fig, table=None, note=None, out=None):
    out = out or p["out"] or os.path.join(p["logs_dir"] or run.cfg.logs_dir, f"{run.stem}-{command}.png")
    figures.save(fig, out)
    click.echo(f"{command}: {out}")
    if table is not None:
        click.echo(f"numbers: {figures.write_csv(table, figures.csv_beside(out))}")
    if note:
        click.echo(note)


def _command(fn):
    """Run a subcommand; a library mistake (UserError) already prints one line and exits 2."""
    @functools.wraps(fn)
    def wrapper(**p):
        if p.get("out"):  # before the checkpoint is loaded and the pictures computed
            writable_file(p["out"], "--out")
            images = list(p.get("images") or ())
            not_an_input(p["out"], "--out", images + [p[k] for k in ("csv_path",) if p.get(k)])
            not_an_input(figures.csv_beside(p["out"]), "--out", images)  # the CSV written beside it
        fn(p)
    return wrapper


@click.group(context_settings={"max_content_width": 100})
def main():
    """Pictures of a trained network: errors, gradcam, occlusion, activations, filters, confusion, augment."""


@main.command()
@_options(_RUN_OPTIONS, _IMAGE_OPTIONS)
@click.option("--top", type=click.IntRange(min=1), default=8, show_default=True, help="Images per group.")
@_command
def errors(p):
    """The most confident mistakes (true and predicted class, probability), and the most confident
    correct answers for contrast; every image's prediction in the CSV. Default: the whole split."""
    run = _run(p)
    fig, table = mistakes.errors(run, _samples(run, p, None), p["top"], p["cols"], p["batch_size"])
    _write(run, p, "errors", fig, table)


def _heat_options(fn):
    for opt in reversed([
            click.option("--class", "target", default=None,
                         help="Explain this class (name or number); default: each image's prediction."),
            click.option("--show", type=click.IntRange(min=1), default=32, show_default=True,
                         help="Images in the figure (the CSV and the box figures cover all).")]):
        fn = opt(fn)
    return fn


def _target(run, value):
    if value is None:
        return None
    if value in run.class_names:
        return run.class_names.index(value)
    if value.isdigit() and int(value) < len(run.class_names):
        return int(value)
    raise UserError(f"--class {value}: not a class of {run.path} (e.g. {', '.join(run.class_names[:4])}) "
                    f"nor a number below {len(run.class_names)}")


@main.command()
@_options(_RUN_OPTIONS, _IMAGE_OPTIONS)
@_heat_options
@click.option("--layer", default=None, help="Layer (see activations --list-layers); default: the last conv block.")
@click.option("--method", type=click.Choice(["auto", "cam", "gradcam"]), default="auto", show_default=True,
              help="auto: CAM where the layer feeds global average pooling and the classifier, else Grad-CAM.")
@_command
def gradcam(p):
    """Class activation maps over the images (CAM or Grad-CAM) at a layer."""
    run = _run(p)
    if p["layer"]:
        run.module(p["layer"])
    opts = heatmaps.HeatOptions("gradcam", p["layer"], _target(run, p["target"]), p["method"],
                                cols=p["cols"], batch_size=p["batch_size"], show=p["show"])
    fig, table, note = heatmaps.explain(run, _samples(run, p, 16), opts)
    _write(run, p, "gradcam", fig, table, note)


@main.command()
@_options(_RUN_OPTIONS, _IMAGE_OPTIONS)
@_heat_options
@click.option("--patch", type=click.IntRange(min=1), default=None, help="Patch side in pixels (default: size/8).")
@click.option("--stride", type=click.IntRange(min=1), default=None, help="Patch step (default: patch/2).")
@_command
def occlusion(p):
    """Occlusion sensitivity: how much the class probability drops when a patch covers each pixel."""
    run = _run(p)
    opts = heatmaps.HeatOptions("occlusion", target=_target(run, p["target"]), patch=p["patch"],
                                stride=p["stride"], cols=p["cols"], batch_size=p["batch_size"], show=p["show"])
    fig, table, note = heatmaps.explain(run, _samples(run, p, 16), opts)
    _write(run, p, "occlusion", fig, table, note)


@main.command()
@_options(_RUN_OPTIONS, _IMAGE_OPTIONS)
@click.option("--layers", "layer_names", default=None, help="Comma-separated layer names.")
@click.option("--list-layers", is_flag=True, help="Print the layer names, types and output shapes.")
@click.option("--max-channels", type=click.IntRange(min=1), default=32, show_default=True)
@_command
def activations(p):
    """The feature maps of the named layers for one image (the first of IMAGES, or of the split)."""
    run = _run(p)
    if p["list_layers"]:
        click.echo(layers.layer_table(run))
        return
    if not p["layer_names"]:
        raise UserError("--layers A,B: name the layers to show (tools/visualize.py activations --list-layers)")
    names = [n.strip() for n in p["layer_names"].split(",") if n.strip()]
    for name in names:
        run.module(name, "--layers")
    sample = _samples(run, p, 1)[0]
    fig, table = layers.activations(run, sample, names, p["max_channels"], p["cols"])
    _write(run, p, "activations", fig, table)


@main.command()
@_options(_RUN_OPTIONS)
@click.option("--layer", default=None, help="Maximise channels of this layer (default: class logits).")
@click.option("--channels", default=None, help="Channels of --layer to maximise: 0,1,2 (default: the first 8).")
@click.option("--classes", default=None, help="Classes to maximise: names or numbers, or 'all' (default: up to 16).")
@click.option("--steps", type=click.IntRange(min=0), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True)
@click.option("--jitter", type=click.IntRange(min=0), default=4, show_default=True,
              help="Pixels of random shift a step.")
@click.option("--blur-every", type=click.IntRange(min=0), default=4, show_default=True)
@click.option("--blur-sigma", type=click.FloatRange(min=0), default=0.5, show_default=True)
@click.option("--decay", type=click.FloatRange(0, 1, max_open=True), default=0.01, show_default=True)
@_command
def filters(p):
    """The first convolution's kernels, and images maximising chosen filters or classes."""
    run = _run(p)
    if p["layer"]:
        run.module(p["layer"])
        targets = _numbers(p["channels"], "--channels") if p["channels"] else list(range(8))
    else:
        targets = _classes(run, p["classes"])
    opts = filters_mod.Ascent(p["steps"], p["lr"], p["jitter"], p["blur_every"], p["blur_sigma"], p["decay"])
    fig, table = filters_mod.filters(run, p["layer"], targets, opts, p["cols"])
    _write(run, p, "filters", fig, table)


def _numbers(value, flag):
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {value}: expected comma-separated numbers, e.g. 0,1,2") from None


def _classes(run, value):
    if value in (None, "all"):
        return list(range(len(run.class_names) if value == "all" else min(16, len(run.class_names))))
    return [_target(run, v.strip()) for v in value.split(",") if v.strip()]


@main.command()
@_options(_RUN_OPTIONS, _IMAGE_OPTIONS)
@click.option("--csv", "csv_path", default=None, help="tools/evaluate.py's ...-confusion.csv (no model run).")
@_command
def confusion(p):
    """The confusion matrix as a heatmap with class names: from a CSV, or computed over the images."""
    if p["csv_path"]:
        counts, names = mistakes.read_confusion_csv(p["csv_path"])
        out = p["out"] or os.path.splitext(p["csv_path"])[0] + ".png"
        figures.save(mistakes.confusion_figure(counts, names, os.path.basename(p["csv_path"])), out)
        click.echo(f"confusion: {out}")
        return
    run = _run(p)
    counts = mistakes.compute_confusion(run, _samples(run, p, None), p["batch_size"])
    table = mistakes.confusion_table(counts, run.class_names)
    fig = mistakes.confusion_figure(counts, run.class_names, f"{run.stem} on {p['split'] or run.cfg.val_split}")
    out = p["out"] or os.path.join(p["logs_dir"] or run.cfg.logs_dir, f"{run.stem}-confusion.png")
    figures.save(fig, out)
    click.echo(f"confusion: {out}\nnumbers: {figures.write_csv(table, figures.csv_beside(out), index=True)}")


@main.command()
@_options(_RUN_OPTIONS, _IMAGE_OPTIONS)
@click.option("--times", type=click.IntRange(min=1), default=7, show_default=True, help="Epochs to draw.")
@_command
def augment(p):
    """The training transform applied to a few images as the loader applies it, epoch after epoch."""
    run = _run(p)
    split = p["split"] or run.cfg.train_split
    samples = _samples(run, p, 4, split)
    _write(run, p, "augment", augment_mod.augment(run, samples, p["times"], split))


if __name__ == "__main__":
    main()
