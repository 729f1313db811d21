"""Command-line pieces shared by the tools: the model flags (same names in summary.py, train.py,
resume.py, evaluate.py)."""
import click

ACTIVATIONS = ("relu", "prelu", "elu", "leaky_relu", "silu", "tanh")
BN_PLACEMENTS = ("before", "after", "none")
INITIALIZERS = ("he_normal", "he_uniform", "xavier_normal", "xavier_uniform",
                "lecun_normal", "lecun_uniform")

# flag -> keyword of build_model(); None means "the recipe's default"
_MODEL_FLAGS = [
    click.option("--image-size", type=click.IntRange(min=1), default=None, help="Input size (pixels)."),
    click.option("--num-classes", type=click.IntRange(min=1), default=None,
                 help="Classes (default: from the dataset's classes file, else 1000)."),
    click.option("--act", type=click.Choice(ACTIVATIONS), default=None, help="Activation."),
    click.option("--bn", type=click.Choice(BN_PLACEMENTS), default=None,
                 help="BatchNorm before or after the activation, or none."),
    click.option("--init", type=click.Choice(INITIALIZERS), default=None,
                 help="Weight initializer (gain matched to the activation)."),
    click.option("--bias-init", type=float, default=None, help="Constant for biases."),
    click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
                 help="Dropout rate."),
    click.option("--width", type=click.FloatRange(0, min_open=True), default=None,
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
