"""Command-line pieces shared by the tools: the model flags (same names in summary.py, train.py,
resume.py, evaluate.py)."""
import click

from toolkit.rules import rule

ACTIVATIONS = ("relu", "prelu", "elu", "leaky_relu", "silu", "tanh")
BN_PLACEMENTS = ("before", "after", "none")
INITIALIZERS = ("he_normal", "he_uniform", "xavier_normal", "xavier_uniform",
                "lecun_normal", "lecun_uniform")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("step", "multistep", "poly", "linear", "cosine", "constant")
AMP = ("off", "bf16", "fp16")
LOADERS = ("auto", "dali", "torch")

# flag -> keyword of build_model(); None means "the recipe's default"
_MODEL_FLAGS = [
    click.option("--image-size", type=rule("image_size").click_type(), default=None, help="Input size (pixels)."),
    click.option("--num-classes", type=rule("num_classes").click_type(), default=None,
                 help="Classes (default: from the dataset's classes file, else 1000)."),
    click.option("--act", type=click.Choice(ACTIVATIONS), default=None, help="Activation."),
    click.option("--bn", type=click.Choice(BN_PLACEMENTS), default=None,
                 help="BatchNorm before or after the activation, or none."),
    click.option("--init", type=click.Choice(INITIALIZERS), default=None,
                 help="Weight initializer (gain matched to the activation)."),
    click.option("--bias-init", type=float, default=None, help="Constant for biases."),
    click.option("--dropout", type=rule("dropout").click_type(), default=None,
                 help="Dropout rate."),
    click.option("--width", type=rule("width").click_type(), default=None,
                 help="Width multiplier on every layer's channels."),
]
MODEL_KEYS = ("image_size", "num_classes", "act", "bn", "init", "bias_init", "dropout", "width")


def model_options(fn):
    """Decorate a click command with the model flags (after --recipe, which the tool declares)."""
    for opt in reversed(_MODEL_FLAGS):
        fn = opt(fn)
    return fn


def model_kwargs(params: dict) -> dict:
    """The model flags the user gave, as build_model() keywords (flags left unset are omitted)."""
    return {k: params[k] for k in MODEL_KEYS if params.get(k) is not None}


def _csv_floats(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated epochs, e.g. 30,60") from None


def _mxnet_only(ctx, param, value):
    """MXNet's device flags, which torchrun replaces: a one-line pointer instead of 'no such option'."""
    if value is not None:
        raise click.BadParameter(
            f"{value!r}: processes and devices come from torchrun here, one process per GPU: "
            "torchrun --nproc_per_node=N tools/train.py ... (several nodes: see the README)")


# training flags shared by train.py and resume.py; None means "the recipe's (or checkpoint's) value"
_TRAIN_FLAGS = [
    click.option("--gpus", callback=_mxnet_only, expose_value=False, hidden=True),
    click.option("--kv-store", callback=_mxnet_only, expose_value=False, hidden=True),
    click.option("--data", default=None, help="Dataset folder (tools/im2rec.py output). Default: the toy set."),
    click.option("--train-split", default=None, help="Split to train on (NAME_train.rec, train-00000.rec, ...)."),
    click.option("--val-split", default=None, help="Split to validate on."),
    click.option("--epochs", "--num-epochs", "epochs", type=rule("epochs").click_type(), default=None,
                 help="Train until this many epochs (MXNet: --num-epochs)."),
    click.option("--batch-size", "-b", type=rule("batch_size").click_type(), default=None, help="Images per process."),
    click.option("--lr", type=rule("lr").click_type(), default=None, help="Learning rate."),
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None),
    click.option("--momentum", "--mom", type=rule("momentum").click_type(), default=None),
    click.option("--nesterov/--no-nesterov", default=None),
    click.option("--weight-decay", "--wd", type=rule("weight_decay").click_type(), default=None),
    click.option("--wd-on-bn-bias/--no-wd-on-bn-bias", default=None,
                 help="Weight decay on BatchNorm and bias parameters too (default: no)."),
    click.option("--lr-schedule", type=click.Choice(SCHEDULES), default=None),
    click.option("--lr-step-epochs", callback=_csv_floats, default=None,
                 help="multistep: epochs where the LR drops (30,60); step: the period (30)."),
    click.option("--lr-factor", type=rule("lr_factor").click_type(), default=None,
                 help="LR multiplier at each step."),
    click.option("--poly-power", type=rule("poly_power").click_type(), default=None),
    click.option("--warmup-epochs", type=rule("warmup_epochs").click_type(), default=None),
    click.option("--label-smoothing", type=rule("label_smoothing").click_type(), default=None),
    click.option("--grad-accum", type=rule("grad_accum").click_type(), default=None, help="Batches per optimizer step."),
    click.option("--loader", type=click.Choice(LOADERS), default=None),
    click.option("--workers", "-j", type=rule("workers").click_type(), default=None,
                 help="Loader workers/threads per process."),
    click.option("--timeout", type=rule("timeout").click_type(), default=None,
                 help="Seconds a loader worker or another rank may stay silent before the run ends with "
                      "one line naming it (300; raise it for slow network file systems)."),
    click.option("--min-crop-scale", type=rule("min_crop_scale").click_type(), default=None,
                 help="Smallest area of RandomResizedCrop (0.08 for ImageNet)."),
    click.option("--eval-resize", type=rule("eval_resize").click_type(), default=None,
                 help="Shorter side before the eval centre crop (default 256/224 of the image size)."),
    click.option("--color-jitter", type=rule("color_jitter").click_type(), default=None),
    click.option("--pca-lighting", type=rule("pca_lighting").click_type(), default=None, help="AlexNet PCA lighting std (0.1)."),
    click.option("--amp", type=click.Choice(AMP), default=None, help="Mixed precision."),
    click.option("--channels-last/--no-channels-last", default=None),
    click.option("--compile/--no-compile", default=None, help="torch.compile the model."),
    click.option("--sync-bn/--no-sync-bn", default=None, help="SyncBatchNorm across GPUs."),
    click.option("--deterministic/--no-deterministic", default=None,
                 help="Deterministic GPU kernels (cuDNN, cuBLAS, torch's), for runs bit-identical across "
                      "a stop and resume on GPUs; slower."),
    click.option("--seed", type=rule("seed").click_type(), default=None),
    click.option("--prefix", default=None, help="Run name: logs/PREFIX.log, checkpoints/PREFIX-NNNN.pt."),
    click.option("--logs-dir", default=None),
    click.option("--checkpoints-dir", default=None),
    click.option("--log-every", type=rule("log_every").click_type(), default=None, help="Batches between log lines."),
    click.option("--keep-last", type=rule("keep_last").click_type(), default=None, help="Epoch checkpoints to keep (0: all)."),
]


def train_options(fn):
    """Decorate a click command with the training flags."""
    for opt in reversed(_TRAIN_FLAGS):
        fn = opt(fn)
    return fn


def _rgb(ctx, param, value):
    if value is None or value == "dataset":
        return None if value is None else ()  # (): the dataset's
    try:
        values = tuple(float(v) for v in value.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise click.BadParameter(f"{value!r}: expected R,G,B on the 0-255 scale (e.g. 123.675,116.28,103.53) "
                                 "or 'dataset'")
    return values


# transfer learning flags of train.py (toolkit/transfer); a resume keeps the checkpoint's
_TRANSFER_FLAGS = [
    click.option("--init-from", default=None, metavar="SOURCE",
                 help="Start from these weights: our checkpoint (PREFIX-NNNN.pt, any recipe with the same "
                      "body), a torchvision state_dict file (.pth), or torchvision:NAME (e.g. torchvision:resnet50)."),
    click.option("--mean", callback=_rgb, default=None, metavar="R,G,B|dataset",
                 help="Normalisation mean, 0-255 (default: the source's with --init-from, else the dataset's)."),
    click.option("--std", callback=_rgb, default=None, metavar="R,G,B|dataset", help="Normalisation std, 0-255."),
    click.option("--freeze-epochs", type=rule("freeze_epochs").click_type(), default=None,
                 help="Epochs in which only the head learns (body and its BatchNorm statistics frozen)."),
    click.option("--freeze-until", default=None, metavar="LAYER",
                 help="Keep the layers up to LAYER frozen for the whole run (names: tools/extract_features.py "
                      "--list-layers)."),
    click.option("--new-head/--keep-head", default=None,
                 help="With --init-from: a new head even when the source's fits (other classes of the same "
                      "number); default: keep a head that fits."),
    click.option("--head-lr-mult", type=rule("head_lr_mult").click_type(), default=None,
                 help="The head's learning rate as a multiple of --lr."),
]


def transfer_options(fn):
    """Decorate a click command with the transfer-learning flags."""
    for opt in reversed(_TRANSFER_FLAGS):
        fn = opt(fn)
    return fn


# --json means one thing in every tool: a switch, the JSON summary as the last line of stdout;
# --json-file PATH writes the same JSON to a file. `--json FILE.json` (tools/predict.py's old form,
# where --json took a path) is read as --json-file FILE.json: only a name ending in .json is taken,
# so `--json photo.jpg` can never make an input image the output.
JSON_HELP = "Print a JSON summary as the last line of the output."
JSON_FILE_HELP = "Write the JSON to this file (.json; --json FILE.json says the same)."


def json_file_args(args):
    """argv with `--json FILE.json` / `--json=FILE` read as `--json-file FILE`."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return out + list(args[i:])
        if a.startswith("--json="):
            out += ["--json-file", a.split("=", 1)[1]]
        elif a == "--json" and i + 1 < len(args) and args[i + 1].lower().endswith(".json"):
            out += ["--json-file", args[i + 1]]
            i += 1
        else:
            out.append(a)
        i += 1
    return out


class JsonCommand(click.Command):
    """A click command whose --json is the shared switch (see json_file_args)."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, json_file_args(args))


def json_options(fn):
    """--json (switch, `as_json`) and --json-file PATH (`json_file`)."""
    fn = click.option("--json-file", "json_file", default=None, metavar="PATH", help=JSON_FILE_HELP)(fn)
    return click.option("--json", "as_json", is_flag=True, help=JSON_HELP)(fn)


def emit_json(summary, as_json: bool = False, json_file=None):
    """--json: `summary` as the last line of stdout; --json-file: the same JSON in that file (atomic)."""
    import json
    import os
    from toolkit.atomic import atomic_open
    if json_file:
        os.makedirs(os.path.dirname(os.path.abspath(json_file)), exist_ok=True)
        with atomic_open(json_file) as f:
            json.dump(summary, f, indent=1)
    if as_json:
        print(json.dumps(summary), flush=True)
