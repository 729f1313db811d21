"""Transfer learning, in process: torchvision's weights in our recipes (same logits), a new head,
prefixes, refusals in one line, the head, freezing (parameters and BatchNorm statistics), the head's
LR, the linear classifier, the toy set's variants, the two torchvision-layout recipes."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from tests.helpers import invoke_tool, run_tool, write_separable_features
from toolkit import toy
from toolkit.engine.config import make_config
from toolkit.engine.optim import build_optimizer
from toolkit.errors import UserError
from toolkit.registry import build_model
from toolkit.transfer.freeze import Freezer, head_keys
from toolkit.transfer.weights import load_into, read_source

# torchvision builder, our recipe, input size (small where the architecture allows), builder kwargs
FAMILIES = [("resnet18", "resnet18", 64, {}), ("resnet50", "resnet50", 64, {}),
            ("vgg11", "vgg11", 32, {"init_weights": False}), ("vgg11_bn", "vgg11_bn", 32, {"init_weights": False}),
            ("squeezenet1_0", "squeezenet1_0", 64, {}), ("squeezenet1_1", "squeezenet1_1", 64, {}),
            ("alexnet", "alexnet_owt", 64, {}), ("googlenet", "googlenet_bn", 64, {"init_weights": True})]


def random_torchvision(name, **kw):
    """torchvision's model with random weights and random BatchNorm statistics (not 0/1, so a
    statistic loaded into the wrong place shows in the logits)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **kw)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def load(recipe, path, **kw):
    model = build_model(recipe, **kw)
    lines = load_into(model, read_source(str(path)), recipe, head_keys(recipe, kw, model))
    return model.eval(), lines


@pytest.mark.parametrize("tv_name,recipe,size,kw", FAMILIES, ids=[f[1] for f in FAMILIES])
def test_torchvision_state_dict_gives_torchvision_logits(tv_name, recipe, size, kw, tmp_path):
    tv = random_torchvision(tv_name, **kw)
    path = tmp_path / f"{tv_name}.pth"
    state = tv.state_dict()
    if recipe == "resnet18":  # as DDP + torch.compile would have saved it
        state = {f"module._orig_mod.{k}": v for k, v in state.items()}
    torch.save(state, path)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    model, lines = load(recipe, path, num_classes=1000, image_size=size)
    with torch.no_grad():
        expected, got = tv(x), model(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item()), \
        (got - expected).abs().max()
    assert "torchvision's layout" in lines[0] and lines[1].endswith("none") and lines[2].endswith("none")
    # another number of classes: the body loaded, a new head as built for 7 classes
    del model, tv
    model7 = build_model(recipe, num_classes=7, image_size=size)
    fresh = {k: v.clone() for k, v in model7.state_dict().items()}
    head = head_keys(recipe, {"num_classes": 7, "image_size": size}, model7)
    lines7 = load_into(model7, read_source(str(path)), recipe, head)
    assert head and all(k in lines7[1] for k in head[-2:]), lines7
    ours = model7.eval().state_dict()
    assert all(torch.equal(ours[k], fresh[k]) for k in head)  # the new head as built
    weights = [k for k in ours if k not in head and ours[k].dim() > 1]
    assert weights and all(not torch.equal(ours[k], fresh[k]) for k in weights)  # the body loaded
    with torch.no_grad():
        assert model7(x).shape == (2, 7)


def test_body_that_does_not_fit_names_the_first_tensor(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(UserError) as err:
        load("resnet18", path, num_classes=1000)
    msg = str(err.value.message)
    assert "\n" not in msg
    assert "first mismatch layers.2.branch.0.0.weight is 128x64x3x3 here but 64x64x3x3" in msg
    assert "layer1.2.conv1.weight" in msg  # the source's own name
    with pytest.raises(UserError, match="weights are for recipe alexnet_owt"):
        torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "a.pth")
        load("alexnet", tmp_path / "a.pth", num_classes=1000, image_size=64)


def test_our_checkpoint_of_another_width_is_refused_with_its_flags(tmp_path):
    small = build_model("resnet18", num_classes=10, width=0.25, image_size=32)
    torch.save({"model": small.state_dict(), "config": {"recipe": "resnet18", "width": 0.25, "image_size": 32},
                "version": 1}, tmp_path / "r-0001.pt")
    with pytest.raises(UserError, match=r"stem\.0\.0\.weight is 64x3x7x7 here but 16x3x7x7.*--image-size 32 --width 0.25"):
        load("resnet18", tmp_path / "r-0001.pt", num_classes=10)
    model, lines = load("resnet18", tmp_path / "r-0001.pt", num_classes=4, width=0.25)
    assert "our checkpoint, ours layout" in lines[0] and "fc.weight, fc.bias" in lines[1]
    # the same number of classes: the head is kept, unless --new-head
    kw = {"num_classes": 10, "width": 0.25}
    for new_head in (False, True):
        model = build_model("resnet18", **kw)
        built = model.fc.weight.clone()
        lines = load_into(model, read_source(str(tmp_path / "r-0001.pt")), "resnet18",
                          head_keys("resnet18", kw, model), new_head)
        assert torch.equal(model.fc.weight, built if new_head else small.fc.weight)
        assert ("fc.weight, fc.bias" in lines[1]) == new_head and ("fc.weight" in lines[2]) == new_head


@pytest.mark.parametrize("text,match", [
    ("nope.pth", "no such file; SOURCE is our checkpoint"),
    ("torchvision:resnet19", "torchvision has no such model"),
])
def test_wrong_source_is_one_line(text, match):
    with pytest.raises(UserError, match=match):
        read_source(text)


def test_torchvision_name_reads_torch_hubs_cache_or_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as err:
        read_source("torchvision:resnet18", download=False)
    msg = err.value.message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert f"put it in {tmp_path}/hub/checkpoints/" in msg and "\n" not in msg
    os.makedirs(tmp_path / "hub" / "checkpoints")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "hub/checkpoints/resnet18-f37072fd.pth")
    source = read_source("torchvision:ResNet18_Weights.IMAGENET1K_V1", download=False)
    assert source.kind == "torchvision" and "fc.weight" in source.state


def test_head_is_what_depends_on_the_classes():
    kw = {"num_classes": 10, "width": 0.25}
    assert head_keys("resnet50", kw, build_model("resnet50", **kw)) == ["fc.weight", "fc.bias"]
    kw = {"num_classes": 3, "width": 0.25}
    assert head_keys("squeezenet1_1", kw, build_model("squeezenet1_1", **kw)) == \
        ["classifier.1.weight", "classifier.1.bias"]
    kw = {"num_classes": 5, "width": 0.25, "image_size": 64}
    with pytest.raises(ValueError, match="options"):
        head_keys("googlenet_bn", {"num_classes": 5}, build_model("googlenet_bn", **kw))
    assert head_keys("googlenet_bn", kw, build_model("googlenet_bn", **kw)) == [
        "aux.0.net.6.weight", "aux.0.net.6.bias", "aux.1.net.6.weight", "aux.1.net.6.bias", "head.3.weight", "head.3.bias"]


def _step(model, optimizer):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    loss = model(x).logsumexp(1).sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_frozen_body_and_its_batchnorm_statistics_stay_until_the_unfreeze_epoch():
    cfg = make_config("resnet18", num_classes=5, image_size=32, width=0.25, freeze_epochs=1, weight_decay=0.1,
                      head_lr_mult=10)
    torch.manual_seed(0)
    model = build_model("resnet18", **cfg.model_kwargs())
    head = head_keys("resnet18", cfg.model_kwargs(), model)
    freezer = Freezer(model, head, freeze_epochs=1)
    optimizer = build_optimizer(model, cfg, head)
    assert [g.get("lr_mult", 1) for g in optimizer.param_groups] == [1, 1, 10, 10]
    assert {id(p) for g in optimizer.param_groups[2:] for p in g["params"]} == \
        {id(model.fc.weight), id(model.fc.bias)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert freezer.apply(model, 0) is False
    _step(model, optimizer)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed == head  # body weights, BN weights, running statistics and batch counts unchanged
    model.train()
    assert freezer.apply(model, 1) is True  # the unfreeze epoch
    _step(model, optimizer)
    after2 = model.state_dict()
    for key in ("stem.0.0.weight", "stem.0.1.weight", "stem.0.1.running_mean", "stem.0.1.running_var",
                "layers.7.branch.1.1.running_mean", "stem.0.1.num_batches_tracked"):
        assert not torch.equal(after2[key], after[key]), key


def test_freeze_until_keeps_those_layers_frozen_after_the_warm_up():
    torch.manual_seed(0)
    kw = {"num_classes": 5, "width": 0.25, "image_size": 32}
    model = build_model("resnet18", **kw)
    head = head_keys("resnet18", kw, model)
    freezer = Freezer(model, head, freeze_epochs=1, freeze_until="layers.3")
    model.train()
    freezer.apply(model, 5)
    learning = {k for k, p in model.named_parameters() if p.requires_grad}
    assert "layers.3.branch.1.1.bias" not in learning and "layers.4.branch.0.0.weight" in learning
    assert not model.layers[3].branch[0][1].training and model.layers[4].branch[0][1].training
    with pytest.raises(UserError, match="--freeze-until layers.99: no such layer.*top-level layers: stem, layers"):
        Freezer(model, head, freeze_until="layers.99")
    with pytest.raises(UserError, match="includes the classifier"):
        Freezer(model, head, freeze_until="fc")


def test_new_recipes_hold_torchvisions_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_model("alexnet_owt")) == 61_100_840
    assert count(build_model("googlenet_bn")) == 13_004_888
    assert count(build_model("googlenet_bn", aux_logits=False)) == 6_624_904  # torchvision's doc figure


def test_linear_classifier_on_separable_features(tmp_path):
    write_separable_features(tmp_path, classes=6, dim=16)
    out = run_tool("tools/train_linear.py", tmp_path / "train", "--val", tmp_path / "val", "--json",
                   "--c-grid", "0.1,1")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rank1"] > 0.95 and result["rank5"] == 1.0 and result["C"] in (0.1, 1.0)
    assert result["macro_f1"] > 0.95 and result["val_images"] == 120
    assert "precision" in out.stdout and "chosen C=" in out.stdout
    bad = invoke_tool("tools/train_linear.py", tmp_path / "nothere", "--val", tmp_path / "val", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "nothere.npy: not found" in bad.stderr


# sha256 of the default set's first 3 drawings of each class (pixels, seed 0), before variants existed
DEFAULT_TOY_DIGEST = "afa7cb419ae8ee5c"


def test_toy_variants(tmp_path):
    h = hashlib.sha256()
    for cls in range(10):
        rng = np.random.default_rng([0, cls])  # make_toy_images' stream for the default set
        for _ in range(3):
            h.update(toy.draw_image(rng, cls).tobytes())
    assert h.hexdigest()[:16] == DEFAULT_TOY_DIGEST
    toy.make_toy_images(str(tmp_path / "b"), 2, 4, 0, variant="symbols")
    assert sorted(os.listdir(tmp_path / "b")) == sorted(toy.SYMBOLS[:4])
    assert not set(toy.SYMBOLS) & set(toy.CLASSES)


def test_checkpoint_meta_carries_the_runs_mean_std_not_the_datasets(tmp_path):
    """A fine-tuned run normalises with the source's mean/std (or --mean/--std): its checkpoints'
    meta, which predict and export read, must say so (it said the dataset's)."""
    from toolkit.engine.config import make_config
    from toolkit.engine.meta import describe
    from toolkit.toy import ensure_toy_dataset
    data = ensure_toy_dataset(str(tmp_path / "toy"), images_per_class=2, quiet=True)
    cfg = make_config("resnet20", data=data, image_size=32, mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))
    meta = describe(cfg)
    assert (meta["mean"], meta["std"]) == ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    info_mean = describe(make_config("resnet20", data=data, image_size=32))["mean"]
    assert info_mean != [1.0, 2.0, 3.0] and len(info_mean) == 3


class _Loader:
    """An evaluation loader's surface: num_samples, set_epoch, batches; `rows` of them decode."""
    def __init__(self, num_samples, rows):
        self.num_samples, self.rows = num_samples, rows

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        if self.rows:
            yield torch.zeros(self.rows, 3, 32, 32), torch.zeros(self.rows, dtype=torch.int64)

    def undecodable_records(self):
        return ["x.rec record 2"]


def test_a_rank_with_no_records_writes_an_empty_part_and_undecodable_records_are_refused(tmp_path):
    """A split smaller than the world leaves a rank with nothing: an empty part of the right width
    (it crashed on `None.flush()`); a record evaluation leaves out would shift every later feature
    against the image ids: one line instead of misaligned files."""
    from toolkit.transfer.features import LayerOutput, write_rank_part
    model = build_model("resnet20", num_classes=10).eval()
    fn = LayerOutput(model, "fc", before=True)
    path = str(tmp_path / "p.npy")
    width = write_rank_part(fn, _Loader(0, 0), path, 32)
    assert np.load(path).shape == (0, width) and width > 0
    assert np.load(str(tmp_path / "p.labels.npy")).shape == (0,)
    with pytest.raises(UserError, match=r"1 records of the split do not decode \(e.g. x.rec record 2\)"):
        write_rank_part(fn, _Loader(3, 2), str(tmp_path / "q.npy"), 32)
