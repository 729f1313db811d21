"""One truth per fact (design.md): every tool that runs a trained model takes normalisation, input size
and class names from the checkpoint's meta; a dataset has one class map (classes.tsv, written once),
checked against the checkpoint's names. Checkpoints here are written directly (untrained weights):
what is tested is which figures reach the loaders and which names the tables get."""
import os
import shutil

import pytest
import torch

from toolkit.data import dataset_info
from toolkit.engine import checkpoint
from toolkit.engine import passes as trainer_mod  # the run's loaders (build_loader)
from toolkit.engine.config import make_config
from toolkit.errors import UserError
from toolkit.engine import meta as meta_mod
from toolkit.engine.meta import describe
from toolkit.engine.model import load_member
from toolkit.registry import build_model
from toolkit.toy import ensure_toy_dataset

MEAN, STD = (10.0, 20.0, 30.0), (5.0, 6.0, 7.0)  # neither the toy's nor ImageNet's


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return ensure_toy_dataset(str(tmp_path_factory.mktemp("one_truth") / "toy"), images_per_class=4, quiet=True)


def write_checkpoint(folder, data, prefix="m", mean=MEAN, std=STD, epoch=1, recipe="resnet20", **cfg_flags):
    """An epoch checkpoint of an untrained resnet20 whose meta holds `mean`/`std`."""
    cfg_flags.setdefault("num_classes", 10)  # as training settles it
    cfg_flags.setdefault("image_size", 32)
    cfg_flags.setdefault("eval_resize", 36)
    cfg = make_config(recipe, data=data, prefix=prefix,
                      checkpoints_dir=str(folder), logs_dir=str(folder), workers=0, batch_size=8, **cfg_flags)
    meta = {**describe(cfg), "mean": list(mean), "std": list(std)}
    state = {"model": build_model(recipe, **cfg.model_kwargs()).state_dict(), "config": dict(vars(cfg)),
             "meta": meta, "epoch": epoch, "batch": 0, "step": epoch}
    path = checkpoint.checkpoint_path(str(folder), prefix, epoch)
    checkpoint.save(path, state)
    return path


def test_test_set_in_its_own_folder(toy, tmp_path):
    """A split packed in a folder of its own (no train split, so no mean/std file): the loader gets
    the checkpoint's normalisation, not ImageNet's (evaluate's rank-1 was 0.854 against predict's 0.987)."""
    alone = tmp_path / "tt"
    alone.mkdir()
    for name in ("toy_val.rec", "toy_val.idx", "classes.tsv"):
        shutil.copy(os.path.join(toy, name), alone / name)
    assert dataset_info(str(alone)).mean != MEAN
    write_checkpoint(tmp_path / "ck", toy)
    seen = []
    real = trainer_mod.build_loader

    def spy(*args, **kwargs):
        seen.append((kwargs["mean"], kwargs["std"], kwargs["image_size"], kwargs["eval_resize"]))
        return real(*args, **kwargs)

    from toolkit.engine.evaluation import run_evaluation
    mp = pytest.MonkeyPatch()
    mp.setattr(trainer_mod, "build_loader", spy)
    try:
        assert run_evaluation(str(tmp_path / "ck"), data=str(alone), workers=0, loader="torch",
                              out_dir=str(tmp_path / "out")) == 0
    finally:
        mp.undo()
    assert seen == [(MEAN, STD, 32, 36)]


def test_members_take_the_checkpoints_preprocessing(toy, tmp_path):
    """load_member's config (what predict, export, the ensemble and their loaders read) holds the
    meta's normalisation, even where the run's config left it to the dataset."""
    member = load_member(write_checkpoint(tmp_path, toy))
    assert (member.cfg.mean, member.cfg.std) == (MEAN, STD)


def test_visualize_uses_the_checkpoints_normalisation(toy, tmp_path):
    from toolkit.visualize.run import load_run
    write_checkpoint(tmp_path, toy)
    run = load_run(str(tmp_path), device="cpu")
    assert run.mean.flatten().tolist() == list(MEAN) and run.std.flatten().tolist() == list(STD)
    shutil.move(toy, str(tmp_path / "moved"))  # the dataset folder moved: files can still be shown
    try:
        assert load_run(str(tmp_path), device="cpu").class_names[:2] == ["checker", "circle"]
    finally:
        shutil.move(str(tmp_path / "moved"), toy)


def test_average_bn_pass_uses_the_runs_normalisation(toy, tmp_path, monkeypatch):
    from toolkit.inference import average
    for epoch in (1, 2):
        write_checkpoint(tmp_path, toy, epoch=epoch)
    seen = []
    real = average.build_loader

    def spy(*args, **kwargs):
        seen.append((kwargs.get("mean"), kwargs.get("std")))
        return real(*args, **kwargs)

    monkeypatch.setattr(average, "build_loader", spy)
    average.run_average(str(tmp_path), "m", last=2, bn_batches=1, workers=0)
    assert seen == [(MEAN, STD)]


def test_init_from_a_checkpoint_whose_data_moved(toy, tmp_path):
    """--init-from (and extract_features) take the source checkpoint's normalisation from its meta
    when its dataset folder is gone; an old checkpoint without meta is one line, not ImageNet's figures."""
    from toolkit.transfer.weights import read_source, source_mean_std
    gone = str(tmp_path / "gone")
    shutil.copytree(toy, gone)
    path = write_checkpoint(tmp_path / "ck", gone)
    shutil.rmtree(gone)
    assert source_mean_std(read_source(path))[:2] == (MEAN, STD)
    state = checkpoint.load(path)
    del state["meta"]
    checkpoint.save(path, state)
    with pytest.raises(UserError, match="--mean R,G,B --std R,G,B"):
        source_mean_std(read_source(path))


def test_more_classes_than_names_keeps_the_names(toy):
    """--num-classes 12 on the toy's 10 classes: its 10 names, then 10, 11."""
    meta = describe(make_config("resnet20", data=toy, image_size=32, num_classes=12))
    assert meta["class_names"][:3] == ["checker", "circle", "cross"] and meta["class_names"][10:] == ["10", "11"]
    assert meta_mod.class_names(["a", "b"], 4) == ["a", "b", "2", "3"]


def test_class_map_checked_against_the_checkpoint(toy, tmp_path):
    meta = describe(make_config("resnet20", data=toy, image_size=32, num_classes=12))
    meta_mod.check_class_map(meta, toy, "m.pt")  # the same map, and a model with more classes: fine
    other = tmp_path / "other"
    other.mkdir()
    names = dataset_info(toy).class_names
    (other / "classes.tsv").write_text("".join(f"{i}\t{n}\n" for i, n in enumerate([names[0], names[7]])))
    with pytest.raises(UserError, match=r"class 1 is 'star' there but 'circle' in m.pt; the model's 'star' is 7"):
        meta_mod.check_class_map(meta, str(other), "m.pt")
    numbered = {**meta, "class_names": [str(i) for i in range(12)]}  # trained on an MXNet-made set
    meta_mod.check_class_map(numbered, str(other), "m.pt")
    meta_mod.check_class_map(meta, str(tmp_path), "m.pt")  # no classes.tsv (MXNet-made): labels only


def _class_folders(root, toy, classes, per_class=2):
    for name in classes:
        os.makedirs(root / name)
        for f in sorted(os.listdir(os.path.join(toy, "images", name)))[:per_class]:
            shutil.copy(os.path.join(toy, "images", name, f), root / name / f)


def test_later_list_numbers_by_the_datasets_class_map(toy, tmp_path):
    """`--list` of a train folder, then of a val folder with fewer classes, into one dataset: the val
    list keeps the train labels (star was 2 in train, 1 in val) and classes.tsv is not rewritten;
    a class the map lacks is one line, and no list is written."""
    from toolkit.lists import make_lists, read_list
    _class_folders(tmp_path / "img" / "train", toy, ["circle", "cross", "star"])
    _class_folders(tmp_path / "img" / "val", toy, ["circle", "star"])
    _class_folders(tmp_path / "img" / "other", toy, ["circle", "square"])
    ds = tmp_path / "ds"
    ds.mkdir()  # tools/im2rec.py makes it
    make_lists(str(ds / "d_train"), str(tmp_path / "img" / "train"), recursive=True)
    tsv = (ds / "classes.tsv").read_text()
    make_lists(str(ds / "d_val"), str(tmp_path / "img" / "val"), recursive=True)
    assert (ds / "classes.tsv").read_text() == tsv == "0\tcircle\n1\tcross\n2\tstar\n"
    labels = {os.path.dirname(it.path): it.labels[0] for it in read_list(str(ds / "d_val.lst"))}
    assert labels == {"circle": 0.0, "star": 2.0}
    with pytest.raises(UserError, match=r"class 'square' is not in .*classes.tsv, the dataset's class map \(3"):
        make_lists(str(ds / "d_other"), str(tmp_path / "img" / "other"), recursive=True)
    assert not (ds / "d_other.lst").exists() and (ds / "classes.tsv").read_text() == tsv


def test_evaluate_and_resume_refuse_another_class_map(toy, tmp_path):
    from toolkit.engine.evaluation import run_evaluation
    from toolkit.training import resume
    data = tmp_path / "data"
    shutil.copytree(toy, data)
    write_checkpoint(tmp_path / "ck", str(data), epochs=3)
    names = dataset_info(str(data)).class_names
    names[1], names[7] = names[7], names[1]  # the set listed again elsewhere, numbered otherwise
    (data / "classes.tsv").write_text("".join(f"{i}\t{n}\n" for i, n in enumerate(names)))
    with pytest.raises(UserError, match="class 1 is 'star' there but 'circle' in"):
        run_evaluation(str(tmp_path / "ck"), workers=0, loader="torch", out_dir=str(tmp_path / "out"))
    with pytest.raises(UserError, match="class 1 is 'star' there but 'circle' in"):
        resume(str(tmp_path / "ck"), "m", 1)


def test_older_checkpoint_keeps_its_training_folders_figures(toy, tmp_path):
    """A checkpoint without meta evaluated with --data on a folder of its own: its mean/std come from
    the folder it was trained on (still here), not from the --data folder (ImageNet's, lacking a train split)."""
    alone = tmp_path / "tt"
    alone.mkdir()
    for name in ("toy_val.rec", "toy_val.idx", "classes.tsv"):
        shutil.copy(os.path.join(toy, name), alone / name)
    path = write_checkpoint(tmp_path / "ck", toy)
    state = checkpoint.load(path)
    del state["meta"]
    checkpoint.save(path, state)
    assert load_member(path, data=str(alone)).meta["mean"] == list(dataset_info(toy).mean)
