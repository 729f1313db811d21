"""One place per rule (toolkit/rules.py): click's option types, the configuration's check and the
loader's check read the same range, so a value is refused (or taken) the same way everywhere."""
import os

import click
import pytest

from toolkit.engine.config import make_config
from toolkit.errors import UserError
from toolkit.rules import RANGES, Range, rule
from toolkit.sweep import load_command

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
train_main = load_command(os.path.join(TOOLS, "train.py"))
evaluate_main = load_command(os.path.join(TOOLS, "evaluate.py"))

CONFIG_KEYS = [k for k in RANGES if k != "epoch"]


def outside(r: Range):
    """A value just outside the range (below its minimum, else above its maximum)."""
    return r.min if r.min_open else (r.min - 1 if r.kind is int else r.min - 0.5)


@pytest.mark.parametrize("key", CONFIG_KEYS)
def test_train_flag_and_configuration_refuse_the_same_value_with_the_rules_words(key):
    r = rule(key)
    option = next(p for p in train_main.params if p.name == key)
    assert (option.type.min, option.type.max, option.type.min_open, option.type.max_open) == \
        (r.min, r.max, r.min_open, r.max_open)
    bad = outside(r)
    with pytest.raises(click.BadParameter):
        option.type.convert(bad, option, None)
    with pytest.raises(UserError) as err:
        make_config("resnet20", data="synthetic", **{key: bad})
    assert err.value.message == f"{r.flag} {bad}: {r.describe()}"
    make_config("resnet20", data="synthetic", **{key: r.min + (1 if r.min_open else 0)})  # the edge is in


def test_the_evaluation_tools_read_the_training_rules():
    for key in ("batch_size", "workers", "timeout", "epoch"):
        option = next(p for p in evaluate_main.params if p.name == key)
        r = rule(key)
        assert (option.type.min, option.type.min_open) == (r.min, r.min_open), key


def test_the_loader_refuses_a_batch_size_by_the_same_rule(tmp_path):
    from toolkit.data import build_loader
    with pytest.raises(UserError) as err:
        build_loader(str(tmp_path), batch_size=0)
    assert err.value.message == "--batch-size 0: must be at least 1"


def test_the_rules_words():
    assert rule("lr").problem(0.0) == "--lr 0.0: must be positive"
    assert rule("min_crop_scale").problem(0) == "--min-crop-scale 0: must be in (0, 1]"
    assert rule("label_smoothing").problem(1.0) == "--label-smoothing 1.0: must be in [0, 1)"
    assert rule("freeze_epochs").problem(-1) == "--freeze-epochs -1: must be 0 or more"
    assert rule("timeout").problem(0.5) == "--timeout 0.5: must be at least 1"
    assert rule("epochs").problem(1) is None and rule("epochs").problem(None) is None
