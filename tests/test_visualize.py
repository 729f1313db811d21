"""tools/visualize.py: every subcommand on a tiny model writes a readable PNG of its layout's size;
user mistakes are one line and exit 2; CAM/Grad-CAM on every recipe family; the toy boxes; the
augmentation preview matches the loader's own draws."""
import hashlib
import importlib.util
import os

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import REPO
from tests.helpers import run_tool
from toolkit import toy
from toolkit.data import open_split
from toolkit.data.sampler import RankBatches
from toolkit.data.torch_backend import RecordDataset
from toolkit.data.transforms import build_transform
from toolkit.visualize import figures, heatmaps
from toolkit.visualize.augment import draws
from toolkit.visualize.images import box_masks, eval_views, gather, read_boxes
from toolkit.visualize.run import load_run

TOOL = "tools/visualize.py"
SIZE = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy set (6 images a class) and a one-epoch resnet18 (width 0.25, 32 px) checkpoint."""
    root = tmp_path_factory.mktemp("vis")
    data = toy.ensure_toy_dataset(str(root / "toy"), images_per_class=6, quiet=True, num_thread=1)
    run_tool("tools/train.py", "--recipe", "resnet18", "--width", "0.25", "--image-size", SIZE,
             "--epochs", "1", "--batch-size", "16", "--workers", "0", "--data", data, "--prefix", "tiny",
             "--logs-dir", root / "logs", "--checkpoints-dir", root / "ck", env={"OMP_NUM_THREADS": "1"})
    return {"root": root, "data": data, "ck": str(root / "ck")}


def _load_tool():
    spec = importlib.util.spec_from_file_location("visualize_tool", REPO / TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


MAIN = _load_tool()


def vis(trained, *args, check=True):
    """The tool in this process (click's runner: no interpreter start per call)."""
    args = [str(a) for a in args] + ["--checkpoints-dir", trained["ck"]]
    result = CliRunner().invoke(MAIN, args)
    if check and result.exit_code != 0:
        raise AssertionError(f"{args}: exit {result.exit_code}\n{result.output}\n{result.exception!r}")
    return result


def png(path, rows, cols):
    """The PNG: exactly rows x cols cells of figures.CELL_W x CELL_H, and not blank."""
    img = mpimg.imread(path)
    assert img.shape[:2] == (round(rows * figures.CELL_H * figures.DPI), round(cols * figures.CELL_W * figures.DPI))
    assert img[..., :3].std() > 0.05  # something drawn, not a blank canvas
    return img


def test_toy_boxes_recorded_around_the_shape(tmp_path):
    root = toy.make_toy_images(str(tmp_path / "t"), 3, 3)
    boxes = read_boxes(toy.boxes_path(root))
    assert len(boxes) == 9 and sorted(os.listdir(root)) == sorted(toy.CLASSES[:3])  # the folder: images only
    img = np.asarray(mpimg.imread(os.path.join(root, "circle", "circle_0000.jpg")), dtype=np.float64)
    x0, y0, x1, y1, w, h = boxes["circle/circle_0000.jpg"]
    assert (img.shape[1], img.shape[0]) == (w, h) and 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    red = (img[..., 0] > 150) & (img[..., 1] < 110) & (img[..., 2] < 110)  # the circle's colour family
    inside = red[y0:y1, x0:x1].sum()
    assert inside > 0.6 * (x1 - x0) * (y1 - y0) and inside > 0.95 * red.sum()


def test_draw_image_is_unchanged_by_the_box():
    a = toy.draw_image(np.random.default_rng([0, 3]), 3)
    b, box = toy.draw_image_with_box(np.random.default_rng([0, 3]), 3)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and len(box) == 4
    # the pixels the code drew before it recorded boxes (the quickstart and other tests rely on them)
    assert hashlib.md5(np.asarray(a).tobytes()).hexdigest() == "67ad7314c148f774396c6378f190459a"


@pytest.mark.parametrize("command,args,layout", [
    ("errors", ["--top", "3"], (2, 3)),
    ("gradcam", ["--count", "5", "--cols", "5"], (2, 5)),
    ("occlusion", ["--count", "3", "--patch", "8", "--stride", "8"], (2, 3)),
    ("activations", ["--layers", "stem,layers.1", "--max-channels", "4", "--cols", "4"], (3, 4)),
    ("filters", ["--classes", "circle,star", "--steps", "3", "--cols", "4"], (4 + 1, 4)),
    ("augment", ["--count", "2", "--times", "3"], (2, 4)),
])
def test_each_subcommand_writes_a_png_of_its_layout(trained, tmp_path, command, args, layout):
    out = tmp_path / f"{command}.png"
    proc = vis(trained, command, *args, "--out", out)
    assert f"{command}: {out}" in proc.stdout
    png(out, *layout)
    if command != "augment":
        assert os.path.exists(tmp_path / f"{command}.csv") and f"numbers: {tmp_path / command}.csv" in proc.stdout


def test_confusion_computed_and_from_evaluates_csv(trained, tmp_path):
    out = tmp_path / "c.png"
    vis(trained, "confusion", "--out", out)
    counts = pd.read_csv(tmp_path / "c.csv", index_col=0)
    assert counts.shape == (10, 10) and counts.to_numpy().sum() == 12  # the 12 validation images
    assert list(counts.columns) == sorted(toy.CLASSES)  # classes.tsv: the folders in sorted order
    img = mpimg.imread(out)
    assert img[..., :3].std() > 0.05
    again = tmp_path / "again.png"
    result = CliRunner().invoke(MAIN, ["confusion", "--csv", str(tmp_path / "c.csv"), "--out", str(again)])
    assert f"confusion: {again}" in result.stdout and mpimg.imread(again).shape == img.shape


def test_images_as_files_folders_and_lists(trained, tmp_path):
    images = os.path.join(trained["data"], "images")
    star = os.path.join(images, "star", "star_0001.jpg")
    out = tmp_path / "g.png"
    vis(trained, "gradcam", star, os.path.join(images, "ring"), "--out", out)
    table = pd.read_csv(tmp_path / "g.csv")
    assert len(table) == 7 and table["true"].tolist() == ["star"] + ["ring"] * 6  # labels from folder names
    assert table["heat_in_box"].notna().all()  # boxes found beside the image folder
    vis(trained, "errors", os.path.join(trained["data"], "toy_val.lst"), "--out", out)
    assert len(pd.read_csv(tmp_path / "g.csv")) == 12


def test_user_mistakes_are_one_line_and_exit_2(trained, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    cases = [
        (["gradcam", "--layer", "layers.99"], "layers.99: no such layer"),
        (["activations", "--layers", "stem,nope"], "nope: no such layer"),
        (["errors", "--epoch", "7"], "no checkpoint"),
        (["gradcam", str(bad)], "bad.jpg: cannot decode the image"),
        (["occlusion", str(tmp_path / "missing.jpg")], "no such image"),
        (["gradcam", "--class", "octagon"], "--class octagon: not a class"),
        (["gradcam", "--layer", "fc"], "not a feature map"),
    ]
    for args, message in cases:
        result = vis(trained, *args, "--out", tmp_path / "x.png", check=False)
        assert result.exit_code == 2, (args, result.output, result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
    # the script itself, as a user runs it: one line, exit status 2
    proc = run_tool(TOOL, "gradcam", "--checkpoints-dir", tmp_path / "none", check=False)
    assert proc.returncode == 2 and "no checkpoints" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "x.png")


def test_list_layers_names_every_module_with_its_output(trained):
    out = vis(trained, "activations", "--list-layers").stdout
    assert "layers.7" in out and "Linear" in out and "fc" in out


def test_augment_shows_what_the_loader_gives(trained):
    """The preview's draws are the training loader's own images for those records and epochs."""
    run = load_run(trained["ck"], device="cpu")
    samples = gather([], run.data, "train", 3, run.class_names)
    shown = draws(run, samples, 2, "train")
    records = open_split(run.data, "train")
    cfg = run.cfg
    transform = build_transform(True, cfg.image_size, cfg.eval_resize, False, cfg.color_jitter, cfg.min_crop_scale)
    dataset = RecordDataset(records, transform, cfg.seed, cfg.pca_lighting)
    for epoch in range(2):
        batches = RankBatches(len(records), 1, 0, 1, True, cfg.seed)
        batches.set_epoch(epoch)
        items = {i: (i, e, p) for (i, e, p), in batches}
        for k, s in enumerate(samples):
            images, _ = dataset.__getitems__([items[s.record]])
            assert torch.equal(images[0], shown[k, epoch])


# the default layer is the last block whose map is at least 7x7: the last block (CAM) at 224 px, an
# earlier one (Grad-CAM) where the last block's map is smaller (2x2 at 64 px, 1x1 at 32 px)
RECIPES = [("resnet18", dict(width=0.25), 224, "CAM"), ("resnet18", dict(width=0.25), 64, "Grad-CAM"),
           ("resnet18", dict(width=0.25), 32, "Grad-CAM"),
           ("squeezenet1_1", dict(width=0.25), 224, "CAM"),
           ("googlenet", dict(width=0.125), 224, "CAM"), ("minigooglenet", dict(width=0.25), 32, "CAM"),
           ("vgg11", dict(width=0.125), 32, "Grad-CAM"), ("alexnet", dict(width=0.25), 64, "Grad-CAM")]


@pytest.mark.parametrize("recipe,kw,size,method", RECIPES)
def test_class_maps_on_every_recipe_family(recipe, kw, size, method):
    from toolkit.registry import build_model
    from toolkit.visualize.run import Logits
    torch.manual_seed(0)
    model = build_model(recipe, num_classes=5, image_size=size, **kw).eval()
    x = torch.randn(3, 3, size, size)
    name = heatmaps.default_layer(model, x)
    layer = dict(model.named_modules())[name]
    result = heatmaps.class_maps(Logits(model), layer, x, torch.tensor([0, 1, 2]))
    assert result.method == method and result.heat.shape == (3, size, size) and (result.heat >= 0).all()


def test_cam_equals_grad_cam_where_the_net_ends_in_global_average_pooling():
    """At the layer feeding GAP + linear, Grad-CAM is CAM / (H x W): the maps agree once scaled."""
    from toolkit.registry import build_model
    from toolkit.visualize.run import Logits
    torch.manual_seed(1)
    model = build_model("resnet18", num_classes=4, image_size=64, width=0.25).eval()
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    layer = dict(model.named_modules())["layers"]
    cam = heatmaps.class_maps(Logits(model), layer, x, t, "cam").heat
    grad = heatmaps.class_maps(Logits(model), layer, x, t, "gradcam").heat
    for a, b in zip(cam, grad):
        assert torch.allclose(a / a.max(), b / b.max(), atol=1e-4)


def test_box_masks_follow_the_eval_resize_and_crop(trained):
    run = load_run(trained["ck"], device="cpu")
    vivid = {"circle", "triangle", "star", "diamond", "hexagon"}  # colours far from any background
    samples = [s for s in gather([], run.data, "val", None, run.class_names) if run.class_names[s.label] in vivid]
    masks = box_masks(run, samples)
    views = eval_views(run, samples)
    assert len(samples) >= 3 and masks.shape == (len(samples), SIZE, SIZE)
    for s, m, v in zip(samples, masks, views):  # the shape's colour lies inside the box
        colour = torch.tensor(toy.COLOURS[toy.CLASSES.index(run.class_names[s.label])]).view(3, 1, 1)
        near = (v.float() - colour).abs().max(0).values < 40
        assert near.sum() > 0 and (near & m).sum() >= 0.9 * near.sum(), s.name


@pytest.mark.slow
def test_heat_falls_on_the_shape_for_a_trained_toy_model(tmp_path):
    """Over the correctly classified validation images of a quickly trained toy model (resnet18,
    width 0.25, 64 px, 320 training images, 10 epochs), the share of the occlusion and Grad-CAM heat
    inside the shape's box is well above the box's share of the image (chance)."""
    data = toy.ensure_toy_dataset(str(tmp_path / "toy"), images_per_class=40, quiet=True, num_thread=1)
    run_tool("tools/train.py", "--recipe", "resnet18", "--width", "0.25", "--image-size", "64",
             "--min-crop-scale", "0.35", "--batch-size", "32", "--epochs", "10", "--lr", "0.2",
             "--lr-schedule", "multistep", "--lr-step-epochs", "7", "--warmup-epochs", "0.5",
             "--workers", "0", "--data", data, "--prefix", "s", "--logs-dir", tmp_path / "logs",
             "--checkpoints-dir", tmp_path / "ck", env={"OMP_NUM_THREADS": "1"})
    run = load_run(str(tmp_path / "ck"), device="cpu")
    samples = gather([], run.data, "val", None, run.class_names)
    views, masks = eval_views(run, samples), box_masks(run, samples)
    labels = torch.tensor([s.label for s in samples])
    predicted = run.predict(views).argmax(1)
    correct = predicted == labels
    assert correct.float().mean() > 0.5  # a model that learnt something
    x = run.normalize(views)
    ratios = {}
    for name, result in [
            ("occlusion", heatmaps.occlusion(run.logits, x, predicted, 8, 4)),
            ("grad-cam layers.3", heatmaps.class_maps(run.logits, run.module("layers.3"), x, predicted, "gradcam")),
            ("cam", heatmaps.class_maps(run.logits, run.module("layers"), x, predicted, "cam"))]:
        fraction, share = heatmaps.heat_in_box(result.heat, masks)
        keep = correct & ~torch.isnan(fraction)
        ratios[name] = float(fraction[keep].mean() / share[keep].mean())
        print(heatmaps.summary_line(name, fraction, share, correct))
    # measured (mean heat inside / mean box share, 65 images): occlusion 0.850 / 0.432 = 1.97x,
    # Grad-CAM at layers.3 (8x8) 0.808 / 0.432 = 1.87x, CAM at the last block (2x2) 0.539 / 0.432 = 1.25x
    assert ratios["occlusion"] > 1.6 and ratios["grad-cam layers.3"] > 1.5 and ratios["cam"] > 1.1, ratios


def test_heat_in_box_against_the_box_share():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True                      # a quarter of the image
    heat = torch.stack([masks.float()[0], torch.ones(8, 8), torch.zeros(8, 8)])
    fraction, share = heatmaps.heat_in_box(heat, masks)
    assert fraction[0] == 1 and fraction[1] == 0.25 and torch.isnan(fraction[2])
    assert torch.equal(share, torch.full((3,), 0.25))
    line = heatmaps.summary_line("x", fraction, share, torch.tensor([True, True, True]))
    assert "mean 0.625" in line and "over 2 correctly classified images (1 more with no positive heat)" in line
