"""One vocabulary across the tools (README, "Flags shared by the tools"): --json is a switch everywhere
(--json-file PATH writes it), no tool writes over one of its inputs, and the smaller items of issue 22."""
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from tests.conftest import REPO
from tests.helpers import write_separable_features
from tests.test_one_truth import toy, write_checkpoint  # noqa: F401 (a fixture)
from toolkit.errors import UserError
from toolkit.sweep import load_command


def tool(name):
    """A tool's click command, in this process (torch imported once)."""
    return load_command(os.path.join(str(REPO), "tools", name + ".py"))


def test_json_file_args():
    from toolkit.cli import json_file_args
    assert json_file_args(["--json", "out.json", "a.jpg"]) == ["--json-file", "out.json", "a.jpg"]
    assert json_file_args(["--json", "a.jpg", "b.JSON"]) == ["--json", "a.jpg", "b.JSON"]
    assert json_file_args(["--json=x", "--", "--json", "y.json"]) == ["--json-file", "x", "--", "--json", "y.json"]


def _image(toy, name="circle"):
    folder = os.path.join(toy, "images", name)
    return os.path.join(folder, sorted(os.listdir(folder))[0])


def test_predict_json_is_a_switch_and_never_writes_over_an_input(toy, tmp_path):
    """`predict --json photo.jpg other.jpg` overwrote photo.jpg with the JSON (--json took a path)."""
    main = tool("predict")
    ck = write_checkpoint(tmp_path / "ck", toy)
    photo, other = tmp_path / "photo.jpg", tmp_path / "other.jpg"
    shutil.copy(_image(toy), photo)
    shutil.copy(_image(toy, "star"), other)
    before = photo.read_bytes()
    res = CliRunner().invoke(main, ["--checkpoint", ck, "--workers", "0", "--quiet", "--json", str(photo), str(other)])
    assert res.exit_code == 0, res.output
    assert photo.read_bytes() == before
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["path"] for r in rows] == [str(photo), str(other)] and len(rows[0]["top"]) == 5
    # the old form `--json FILE.json` still writes the file; --csv over an input is one line, exit 2
    res = CliRunner().invoke(main, ["--checkpoint", ck, "--workers", "0", "--quiet", "--json", str(tmp_path / "p.json"),
                                    str(photo)])
    assert res.exit_code == 0 and len(json.loads((tmp_path / "p.json").read_text())) == 1
    with pytest.raises(UserError, match=r"--csv .*photo.jpg: is one of the inputs"):
        CliRunner().invoke(main, ["--checkpoint", ck, "--workers", "0", "--csv", str(photo), str(photo)],
                           standalone_mode=False, catch_exceptions=False)
    assert photo.read_bytes() == before
    with pytest.raises(UserError, match="--json is a switch .* --json-file preds"):
        CliRunner().invoke(main, ["--checkpoint", ck, "--json", "preds", str(photo)],
                           standalone_mode=False, catch_exceptions=False)


def test_train_linear_names_classes_and_notes_the_grid_edge(tmp_path):
    main = tool("train_linear")
    write_separable_features(tmp_path, classes=3, dim=8, sizes=(("train", 60), ("val", 30)))
    (tmp_path / "train.json").write_text(json.dumps({"class_names": ["cat", "dog", "fox"]}))
    res = CliRunner().invoke(main, [str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--c-grid", "0.001,0.002",
                                    "--json-file", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "fox" in res.output and "note: C=0.001 is the grid's smallest value" in res.output
    assert json.loads((tmp_path / "r.json").read_text())["C"] == 0.001


def test_default_gradcam_layer_is_not_a_2x2_map():
    import torch
    from toolkit.registry import build_model
    from toolkit.visualize.heatmaps import default_layer, _record_outputs
    model = build_model("resnet18", num_classes=10).eval()
    x = torch.zeros(1, 3, 64, 64)
    name = default_layer(model, x)
    size = next(o.shape[-2:] for n, _, o in _record_outputs(model, x)[0] if n == name)
    assert min(size) >= 7, (name, size)  # layer4 (the last block) is 2x2 at 64 px
    assert default_layer(model, torch.zeros(1, 3, 224, 224)) == "layers"  # the last block, 7x7 at 224: as before


def test_gradcam_for_a_class_one_scale_and_its_probability(toy, tmp_path):
    """--class C: every map on one scale and each title with C's probability (each map was scaled
    to its own maximum and titled with the predicted class's probability only)."""
    from toolkit.visualize import heatmaps
    from toolkit.visualize.images import gather
    from toolkit.visualize.run import load_run
    write_checkpoint(tmp_path, toy)
    run = load_run(str(tmp_path), device="cpu")
    samples = gather([], toy, "val", 4, run.class_names)
    fig, table, _ = heatmaps.explain(run, samples, heatmaps.HeatOptions("gradcam", target=7, show=4, cols=4))
    heat_axes = [ax for ax in fig.axes if len(ax.images) == 2]
    assert len(heat_axes) == 4
    assert len({ax.images[1].get_clim() for ax in heat_axes}) == 1
    for ax, p in zip(heat_axes, table["target_probability"]):
        assert ax.get_title().splitlines()[1].startswith(f"star {p:.2f}")


def test_ensemble_takes_a_bare_prefix(toy, tmp_path):
    """`--ensemble A:10 A` (A: its newest checkpoint) was refused: A was not taken as a member."""
    from toolkit.inference.ensemble import expand_members
    assert expand_members(["--ensemble", "A:10", "A", "--split", "val"], positional=False) == \
        ["--ensemble", "A:10", "--ensemble", "A", "--split", "val"]
    write_checkpoint(tmp_path / "ck", toy, prefix="A")
    argv = ["--checkpoints-dir", str(tmp_path / "ck"), "--ensemble", "A:1", "A", "photos/"]
    assert expand_members(argv) == argv[:4] + ["--ensemble", "A", "photos/"]  # predict: a run, then an image folder


def test_visualize_reads_files_as_predict_does(toy, tmp_path, capsys):
    """A folder of .bmp/.webp images is read (it held no images for visualize); a file that does not
    decode is skipped with a line (it aborted visualize); records are named FILE.rec#KEY (SPLIT#I)."""
    from PIL import Image
    from toolkit.data import open_split
    from toolkit.visualize.images import gather
    folder = tmp_path / "star"
    folder.mkdir()
    for ext in ("bmp", "webp"):
        Image.open(_image(toy, "star")).save(folder / f"a.{ext}")
    (folder / "broken.jpg").write_bytes(b"not an image")
    names = ["circle", "star"]
    samples = gather([str(folder)], toy, "val", None, names)
    assert [os.path.basename(s.name) for s in samples] == ["a.bmp", "a.webp"] and {s.label for s in samples} == {1}
    assert "broken.jpg: cannot decode the image" in capsys.readouterr().err
    records = gather([], toy, "val", 2, names)
    first = open_split(toy, "val")
    assert records[0].name == f"{first.readers[0].path}#{first.readers[0].keys[0]}"


def test_list_layers_one_format(toy, tmp_path):
    """tools/visualize.py activations --list-layers and tools/extract_features.py --list-layers print
    the same table (they had two formats)."""
    from toolkit.registry import build_model
    from toolkit.transfer.features import layer_table
    from toolkit.visualize import layers
    from toolkit.visualize.run import load_run
    write_checkpoint(tmp_path, toy)
    run = load_run(str(tmp_path), device="cpu")
    vis = layers.layer_table(run)
    feats = layer_table(build_model("resnet20", num_classes=10).eval(), 32, "fc")
    assert feats.splitlines()[:-1] == vis.splitlines()[:-1]
    assert feats.splitlines()[-1].startswith(vis.splitlines()[-1]) and feats.endswith("<- its input is the default --layer")
    assert any(" 64x8x8 " in line for line in vis.splitlines())


def test_shared_flag_names():
    """--image-root (with --root) in predict and visualize; --out-dir (with --logs-dir) in visualize."""
    predict, visualize = tool("predict"), tool("visualize")
    opts = {o.name: o.opts for o in predict.params}
    assert opts["root"] == ["--image-root", "--root"]
    for sub in ("errors", "gradcam"):
        opts = {o.name: o.opts for o in visualize.commands[sub].params}
        assert opts["image_root"] == ["--image-root", "--root"] and opts["logs_dir"] == ["--out-dir", "--logs-dir"]


def test_visualize_out_never_an_input(tmp_path):
    """`visualize confusion --csv c.csv --out c.csv` wrote the figure over evaluate's CSV."""
    csv = tmp_path / "c.csv"
    csv.write_text("true\\\\predicted,a,b\na,1,0\nb,0,1\n")
    before = csv.read_bytes()
    res = CliRunner().invoke(tool("visualize"), ["confusion", "--csv", str(csv), "--out", str(csv)])
    assert res.exit_code == 2 and csv.read_bytes() == before
    assert "is one of the inputs" in res.output
