"""Recipes: exact parameter counts, MACs, every recipe runs, initialiser statistics, bad input."""
import json
import math

import pytest
import torch
import torch.nn as nn

from tests.helpers import invoke_tool, run_tool
from toolkit import layers, registry
from toolkit.errors import UserError
from toolkit.summary import summarize

REFERENCE_PARAMS = {  # torchvision's counts (1000 classes, 224x224)
    "vgg11": 132_863_336, "vgg16": 138_357_544, "vgg16_bn": 138_365_992, "vgg19": 143_667_240,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808, "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
}
# He et al. 2016 Table 6 prints two significant figures (0.27M ... 1.7M)
CIFAR_PARAMS = {"resnet20": 0.27e6, "resnet32": 0.46e6, "resnet44": 0.66e6, "resnet56": 0.85e6,
                "resnet110": 1.7e6}


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_counts_equal_reference(name):
    assert _params(registry.build_model(name)) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", sorted(CIFAR_PARAMS))
def test_cifar_resnets_match_table6(name):
    n = _params(registry.build_model(name, num_classes=10, image_size=32))
    paper = CIFAR_PARAMS[name]
    # within 1%, or within the rounding of the printed figure (1.7M stands for 1.65M-1.75M)
    assert abs(n - paper) / paper < 0.01 or round(n / 1e5) / 10 == paper / 1e6, n


@pytest.mark.parametrize("name,gmacs", [("resnet50", 4.11), ("resnet18", 1.82), ("vgg16", 15.47)])
def test_macs_at_224(name, gmacs):
    s = summarize(registry.build_model(name), 224)
    assert abs(s["macs"] / 1e9 - gmacs) / gmacs < 0.02


def test_every_recipe_runs_forward_and_backward_small():
    for name in registry.list_recipes():
        if name == "mxnet":  # builds an imported MXNet graph only: tests/test_mxnet_import.py
            continue
        recipe = registry.get_recipe(name)
        size = max(recipe.min_image_size, 32)
        model = registry.build_model(name, num_classes=5, image_size=size, width=0.125)
        model.train()
        out = model(torch.randn(2, 3, size, size))
        out = out[0] if isinstance(out, tuple) else out
        assert out.shape == (2, 5), name
        out.logsumexp(1).sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), name


def test_googlenet_aux_heads_only_in_training():
    model = registry.build_model("googlenet", num_classes=7, image_size=96, width=0.25, aux_logits=True)
    model.train()
    assert [o.shape for o in model(torch.randn(2, 3, 96, 96))] == [(2, 7)] * 3
    model.eval()
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 7)


@pytest.mark.parametrize("act", ["relu", "prelu", "elu", "leaky_relu", "silu", "tanh"])
@pytest.mark.parametrize("init", ["he_normal", "he_uniform", "xavier_normal", "xavier_uniform",
                                  "lecun_normal", "lecun_uniform"])
def test_initializer_statistics(act, init):
    model = registry.build_model("vgg11", num_classes=10, image_size=32, act=act, init=init,
                                 width=0.5, bias_init=0.1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs[2:]:  # enough weights for a tight estimate
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(conv.weight)
        expected = layers.init_std(init, layers.gain(act), fan_in, fan_out)
        assert abs(conv.weight.std().item() - expected) / expected < 0.1
        assert torch.all(conv.bias == 0.1)
    assert any(isinstance(m, nn.PReLU) for m in model.modules()) == (act == "prelu")


def test_gain_matches_he_for_relu_family():
    assert layers.gain("relu") == pytest.approx(math.sqrt(2))
    assert layers.gain("prelu") == pytest.approx(math.sqrt(2 / (1 + 0.25 ** 2)))
    # the generalised rule: E[(gain * f(z))^2] = 1 for z ~ N(0, 1)
    z = torch.randn(2_000_000, dtype=torch.float64)
    for act, f in (("elu", nn.functional.elu), ("silu", nn.functional.silu)):
        assert (layers.gain(act) ** 2 * f(z).pow(2).mean()).item() == pytest.approx(1, rel=0.01)


def test_bn_placement_orders_layers():
    after = registry.build_model("vgg11", bn="after", width=0.25, image_size=32)
    block = after.features[0]
    assert [type(m) for m in block] == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d]
    before = registry.build_model("vgg11_bn", width=0.25, image_size=32).features[0]
    assert [type(m) for m in before] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    none = registry.build_model("resnet18", bn="none", width=0.25, image_size=32)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in none.modules())
    alex = registry.build_model("alexnet", bn="before", width=0.25, image_size=64)
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in alex.modules())


@pytest.mark.parametrize("kw,match", [
    (dict(act="gelu"), "unknown activation 'gelu'.*prelu"),
    (dict(init="orthogonal"), "unknown initializer.*he_normal"),
    (dict(image_size=16), "too small.*at least 32"),
])
def test_bad_options_are_one_line_errors(kw, match):
    with pytest.raises(UserError, match=match):
        registry.build_model("resnet18", **kw)
    with pytest.raises(UserError, match="valid recipes: alexnet"):
        registry.build_model("resnet19")
    with pytest.raises(UserError, match="not possible.*before, none"):
        registry.build_model("preact_resnet18", bn="after")


def test_registry_rejects_duplicates_and_lists_by_pattern():
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_recipe("resnet18")(lambda **kw: None)
    assert registry.list_recipes("vgg1?_bn") == ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
    assert registry.get_recipe("resnet50").defaults.lr == 0.1


def test_summary_tool_json_and_errors():
    run = run_tool("tools/summary.py", "--recipe", "resnet20", "--act", "prelu", "--json")
    info = json.loads(run.stdout.strip().splitlines()[-1])
    model = registry.build_model("resnet20", act="prelu")
    assert info["params"] == _params(model) and info["image_size"] == 32 and info["macs"] > 4e7
    assert "layers.0.branch.0.0" in run.stdout
    bad = invoke_tool("tools/summary.py", "--recipe", "resnet20", "--act", "gelu", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "gelu" in bad.stderr
