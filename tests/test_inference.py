"""Using a trained model: self-describing checkpoints, predict (same pixels and top-1 as evaluate,
undecodable files, older checkpoints), ensembles (the mean softmax, exact), weight averaging
(resumes and evaluates). The export tests are in test_export.py."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import run_tool
from toolkit.data import dataset_info
from toolkit.data.torch_backend import normalize
from toolkit.engine import checkpoint
from toolkit.engine.config import make_config
from toolkit.engine.dist import DistEnv
from toolkit.engine.evaluation import run_evaluation
from toolkit.training import resume, run
from toolkit.engine.passes import make_eval_loader
from toolkit.errors import UserError
from toolkit.inference import predict
from toolkit.inference.average import run_average
from toolkit.inference.ensemble import expand_members, run_ensemble_evaluation
from toolkit.engine.model import load_member
from toolkit.lists import read_list
from toolkit.toy import ensure_toy_dataset

ENV1 = {"OMP_NUM_THREADS": "1"}
CPU = DistEnv(0, 0, 1, torch.device("cpu"))
# in this process, loaders run without worker processes (workers forked after OpenCV's thread pool
# started in this process hang: see toolkit/inference/ensemble.py)
TINY = dict(batch_size=16, workers=0, log_every=100, lr=0.01, lr_schedule="constant")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Toy set (10 classes x 12 images: 96 train, 24 val) and two runs of different seeds and input
    geometry, trained in this process: A (32 px from a 40 px resize, 2 epochs), B (32 px from 36, 1 epoch)."""
    root = tmp_path_factory.mktemp("inference")
    data = ensure_toy_dataset(str(root / "toy"), images_per_class=12, quiet=True)
    dirs = dict(data=data, checkpoints_dir=str(root / "ck"), logs_dir=str(root / "logs"))
    assert run(make_config("resnet20", prefix="A", epochs=2, image_size=32, eval_resize=40, seed=1, **TINY, **dirs)) == 0
    assert run(make_config("resnet20", prefix="B", epochs=1, image_size=32, eval_resize=36, seed=2, **TINY, **dirs)) == 0
    return {"root": root, "data": data, "ck": str(root / "ck"),
            "A": checkpoint.checkpoint_path(str(root / "ck"), "A", 2),
            "B": checkpoint.checkpoint_path(str(root / "ck"), "B", 1)}


def val_files(data):
    return [os.path.join(data, "images", it.path) for it in read_list(os.path.join(data, "toy_val.lst"))]


def val_labels(data):
    return [int(it.labels[0]) for it in read_list(os.path.join(data, "toy_val.lst"))]


def eval_softmax(member, data, ten_crop=False):
    """The evaluation loader's path: per-record softmax [n, C] (ten-crop: mean over crops) and labels."""
    loader = make_eval_loader(member.cfg, CPU, data, "val", 8, "torch", 0, ten_crop)
    loader.set_epoch(0)
    probs, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            if x.dim() == 5:
                b, c = x.shape[:2]
                probs.append(member.model(x.flatten(0, 1)).softmax(1).view(b, c, -1).mean(1))
            else:
                probs.append(member.model(x).softmax(1))
            labels.append(y)
    return torch.cat(probs), torch.cat(labels)


def test_checkpoint_describes_itself(runs):
    state = checkpoint.load(runs["A"])
    info = dataset_info(runs["data"])
    meta = state["meta"]
    assert meta["class_names"] == info.class_names and meta["num_classes"] == 10
    assert meta["mean"] == list(info.mean) and meta["std"] == list(info.std)
    assert (meta["image_size"], meta["eval_resize"], meta["recipe"]) == (32, 40, "resnet20")


def test_predict_same_pixels_as_eval_loader(runs):
    member = load_member(runs["A"])
    sources = predict.Sources(val_files(runs["data"]))
    transforms, _ = predict.transforms_for([member], ten_crop=False)
    dataset = predict.PredictDataset(sources, range(len(sources)), transforms)
    images = torch.stack([dataset[k][1][0] for k in range(len(dataset))])
    mean = torch.tensor(member.meta["mean"]).view(1, 3, 1, 1)
    ours = normalize(images, mean, 1.0 / torch.tensor(member.meta["std"]).view(1, 3, 1, 1), CPU.device,
                     torch.float32, False)
    loader = make_eval_loader(member.cfg, CPU, runs["data"], "val", 8, "torch", 0)
    loader.set_epoch(0)
    theirs = torch.cat([x.clone() for x, _ in loader])
    assert ours.shape == theirs.shape == (24, 3, 32, 32)
    assert torch.equal(ours, theirs)


@pytest.mark.slow
def test_predict_top1_matches_evaluate(runs, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    lst = os.path.join(runs["data"], "toy_val.lst")
    out = run_tool("tools/predict.py", "--checkpoint", runs["A"], lst, str(bad), "--root",
                   os.path.join(runs["data"], "images"), "--csv", tmp_path / "p.csv", "--json", tmp_path / "p.json",
                   "--top-k", "3", "--workers", "0", env=ENV1, check=False)
    assert out.returncode == 0, out.stderr
    assert sum(str(bad) in line for line in out.stdout.splitlines()) == 1
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(table.columns[:7]) == ["path", "class1", "prob1", "class2", "prob2", "class3", "prob3"]
    assert table["path"].tolist() == val_files(runs["data"]) + [str(bad)]
    assert table["error"].iloc[-1] and not table["error"].iloc[:-1].any()
    member = load_member(runs["A"])
    probs, labels = eval_softmax(member, runs["data"])
    no_ties(probs)
    names = member.meta["class_names"]
    assert table["class1"].iloc[:-1].tolist() == [names[c] for c in probs.argmax(1).tolist()]
    assert np.allclose(table["prob1"].iloc[:-1].astype(float), probs.max(1).values.numpy(), atol=1e-6)
    # and tools/evaluate.py's confusion matrix of the records is the one of predict's top-1
    assert run_evaluation(runs["ck"], "A", 2, out_dir=str(tmp_path), workers=0) == 0
    confusion = pd.read_csv(tmp_path / "A-0002-val-confusion.csv", index_col=0).to_numpy()
    mine = np.zeros((10, 10), dtype=np.int64)
    for label, name in zip(val_labels(runs["data"]), table["class1"].iloc[:-1]):
        mine[label, names.index(name)] += 1
    assert labels.tolist() == val_labels(runs["data"])
    assert (confusion == mine).all()
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved[-1] == {"path": str(bad), "error": table["error"].iloc[-1]}
    assert saved[0]["top"][0]["class"] == table["class1"].iloc[0]


def test_checkpoint_without_meta_still_predicts(runs, tmp_path):
    state = checkpoint.load(runs["A"])
    del state["meta"]  # as written before checkpoints described themselves
    old = str(tmp_path / "old-0002.pt")
    torch.save(state, old)
    files = val_files(runs["data"])[:6]
    rows = {}
    for path in (runs["A"], old):
        member = load_member(path)
        done, probs, failed = predict.predict_probs([member], predict.Sources(files), CPU, workers=0)
        rows[path] = (member.meta, probs)
    assert rows[old][0]["class_names"] == rows[runs["A"]][0]["class_names"]
    assert torch.equal(rows[old][1], rows[runs["A"]][1])
    moved = dict(state, config={**state["config"], "data": str(tmp_path / "gone")})
    torch.save(moved, old)
    with pytest.raises(UserError, match="--data"):
        load_member(old)
    assert load_member(old, data=runs["data"]).meta["class_names"] == rows[old][0]["class_names"]


def ensemble_summary(runs, tmp_path, capsys, specs, ten_crop=False):
    capsys.readouterr()
    assert run_ensemble_evaluation(specs, runs["ck"], ten_crop=ten_crop, workers=0, out_dir=str(tmp_path),
                                   as_json=True) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def no_ties(probs):
    """The comparisons below are exact only where no two classes tie for a rank."""
    top = probs.topk(6, 1).values
    for k in (0, 4):  # rank-1: first against second; rank-5: fifth against sixth
        assert ((top[:, k] - top[:, k + 1]) > 1e-4 * top[:, k]).all()


def test_ensemble_scores_the_mean_softmax(runs, tmp_path, capsys):
    summary = ensemble_summary(runs, tmp_path, capsys, ["A:2", runs["B"]])
    a, b = load_member(runs["A"]), load_member(runs["B"])
    (pa, labels), (pb, _) = eval_softmax(a, runs["data"]), eval_softmax(b, runs["data"])
    mean = (pa + pb) / 2
    no_ties(mean)
    top5 = mean.topk(5, 1).indices
    assert summary["images"] == 24
    assert summary["rank1"] == int((mean.argmax(1) == labels).sum()) / 24
    assert summary["rank5"] == int((top5 == labels[:, None]).any(1).sum()) / 24
    for m, p in zip(summary["members"], (pa, pb)):
        assert m["rank1"] == int((p.argmax(1) == labels).sum()) / 24
    confusion = pd.read_csv(summary["confusion_csv"], index_col=0).to_numpy()
    direct = np.zeros((10, 10), dtype=np.int64)
    np.add.at(direct, (labels.numpy(), mean.argmax(1).numpy()), 1)
    assert (confusion == direct).all()
    # predict takes the same list and gives the same mean
    files = val_files(runs["data"])
    done, probs, _ = predict.predict_probs([a, b], predict.Sources(files), CPU, workers=0)
    assert torch.allclose(probs, mean, atol=1e-6)


def test_ensemble_with_ten_crop(runs, tmp_path, capsys):
    summary = ensemble_summary(runs, tmp_path, capsys, ["A:2", "B:1"], ten_crop=True)
    (pa, labels), (pb, _) = (eval_softmax(load_member(runs[k]), runs["data"], ten_crop=True) for k in "AB")
    mean = (pa + pb) / 2
    no_ties(mean)
    assert summary["ten_crop"] and "-10crop-" in summary["per_class_csv"]
    assert summary["rank1"] == int((mean.argmax(1) == labels).sum()) / 24


@pytest.mark.slow
def test_averaged_checkpoint_resumes_and_evaluates(runs, tmp_path, capsys):
    path = run_average(runs["ck"], "A", 2, workers=0)
    assert path == checkpoint.checkpoint_path(runs["ck"], "A-avg2", 2)
    avg, s1, s2 = (checkpoint.load(p) for p in (path, checkpoint.checkpoint_path(runs["ck"], "A", 1), runs["A"]))
    key = next(k for k in avg["model"] if k.endswith("conv1.weight") or k.endswith(".weight"))
    assert torch.allclose(avg["model"][key], (s1["model"][key].double() + s2["model"][key].double()).div(2).float())
    bn = next(k for k in avg["model"] if k.endswith("running_mean"))
    assert not torch.equal(avg["model"][bn], s2["model"][bn])  # recomputed, not copied
    assert avg["averaged"]["bn_images"] == 96 and avg["config"]["prefix"] == "A-avg2" and "meta" in avg
    capsys.readouterr()
    assert run_evaluation(runs["ck"], "A-avg2", out_dir=str(tmp_path), workers=0, as_json=True) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == 24
    assert resume(runs["ck"], "A-avg2", None, epochs=3, logs_dir=str(tmp_path)) == 0
    assert os.path.exists(checkpoint.checkpoint_path(runs["ck"], "A-avg2", 3))
    with pytest.raises(UserError, match="exists"):  # nothing is overwritten
        run_average(runs["ck"], "A", 2, workers=0)
    with pytest.raises(UserError, match="holds 2 epoch"):
        run_average(runs["ck"], "A", 3, workers=0)


def test_gather_files_and_errors(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.jpg", "a/b/y.PNG", "a/b/z.txt", "w.jpg"):
        (tmp_path / name).write_bytes(b"")
    found = predict.gather_files([str(tmp_path / "a"), str(tmp_path / "*.jpg")])
    assert found == [str(tmp_path / "a" / "x.jpg"), str(tmp_path / "a" / "b" / "y.PNG"), str(tmp_path / "w.jpg")]
    for bad in (str(tmp_path / "missing.jpg"), str(tmp_path / "*.gif")):
        with pytest.raises(UserError):
            predict.gather_files([bad])


def test_expand_members():
    argv = ["--ensemble", "r1:10", "r2:3", "c/x.pt", "img/", "--top-k", "3"]
    assert expand_members(argv) == ["--ensemble", "r1:10", "--ensemble", "r2:3", "--ensemble", "c/x.pt",
                                    "img/", "--top-k", "3"]
    assert expand_members(["--ensemble", "a", "--json"]) == ["--ensemble", "a", "--json"]


def test_lst_with_a_wrong_root_is_one_line(tmp_path):
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "images" / "a" / "x.jpg").write_bytes(b"")
    (tmp_path / "val.lst").write_text("0\t0.000000\ta/x.jpg\n")
    with pytest.raises(UserError, match=r"val.lst: 1 of 1 listed images are not under .*--image-root") as err:
        predict.gather_files([str(tmp_path / "val.lst")])
    assert "\n" not in str(err.value)
    assert predict.gather_files([str(tmp_path / "val.lst")], root=str(tmp_path / "images")) == \
        [str(tmp_path / "images" / "a" / "x.jpg")]


def test_unwritable_csv_or_json_is_one_line_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for options, flag in ((dict(csv_path=str(tmp_path)), "--csv"),
                          (dict(json_file=str(blocker / "sub" / "p.json")), "--json-file")):
        # checked before the (missing) checkpoint is looked at
        with pytest.raises(UserError, match=flag) as err:
            predict.run(["x.jpg"], checkpoint_path=str(tmp_path / "missing.pt"), **options)
        assert "\n" not in str(err.value)


def test_csv_columns_when_nothing_decodes(tmp_path):
    rows = [{"path": "a.jpg", "error": "an empty file (0 bytes)"}]
    predict.write_outputs(rows, 3, csv_path=str(tmp_path / "p.csv"))
    assert list(pd.read_csv(tmp_path / "p.csv").columns) == \
        ["path", "class1", "prob1", "class2", "prob2", "class3", "prob3", "error"]


def test_not_a_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "photo.pt"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(UserError, match="not a readable checkpoint") as err:
        checkpoint.load(str(bad))
    assert "\n" not in str(err.value)


def test_ensemble_unwritable_out_dir_is_one_line_before_the_passes(runs, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr("toolkit.inference.ensemble.evaluate_member",
                        lambda *a, **k: pytest.fail("evaluated before --out-dir was checked"))
    with pytest.raises(UserError, match="--out-dir"):
        run_ensemble_evaluation([runs["A"], runs["B"]], runs["ck"], workers=0, out_dir=str(blocker / "sub"))
