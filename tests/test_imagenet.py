"""tools/imagenet.py on a small fake ILSVRC-2012 in the downloads' structure (toolkit/imagenet/fake.py):
the tar, folder and Kaggle routes give the same files (and im2rec's records for the same lists and
flags), an interrupted run continued ends byte-identical, the odd files come out as RGB JPEGs both
loader backends read, bad input is one line; and the manual route's devkit handling (issue 27)."""
import filecmp
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tests.conftest import REPO
from toolkit import im2rec, lists, recordio
from toolkit.imagenet import fake, prepare as preparing
from toolkit.sweep import load_command

TOOL = load_command(str(REPO / "tools" / "imagenet.py"))
FLAGS = ["--num-shards", "3", "--num-thread", "1"]


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return fake.make_fake_imagenet(str(tmp_path_factory.mktemp("imagenet")), classes=4, per_class=5, val=12)


def run(*args, code=0):
    result = CliRunner().invoke(TOOL, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def prepared(net, out, route="tar", *extra):
    src = {"tar": ["--train", net["train_tar"], "--val", net["val_tar"], "--devkit", net["devkit"]],
           "folder": ["--train", net["train"], "--val", net["val"], "--devkit", net["devkit"]],
           "kaggle": ["--kaggle", net["kaggle"]]}[route]
    return run("prepare", *src, "--out", out, *FLAGS, *extra)


def same_files(a, b, names=None):
    names = names or sorted(os.listdir(a))
    assert names == sorted(os.listdir(b)) or names != sorted(os.listdir(a))
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


@pytest.fixture(scope="module")
def tar_set(net, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tar") / "imagenet")
    prepared(net, out)
    return out


def test_the_three_routes_give_the_same_records_lists_and_labels(net, tar_set, tmp_path):
    for route in ("folder", "kaggle"):
        prepared(net, tmp_path / route, route)
        same_files(tar_set, tmp_path / route)
    # train labels: sorted wnids; val labels: the devkit's IDs (not in sorted order) through meta.mat
    classes = sorted(net["wnids"].split(","))
    assert lists.read_classes(os.path.join(tar_set, "classes.tsv")) == classes
    val = list(lists.read_list(os.path.join(tar_set, "imagenet_val.lst")))
    with open(os.path.join(net["kaggle"], "LOC_val_solution.csv")) as f:
        truth = dict(line.split(",")[0:2] for line in f.read().splitlines()[1:])
    assert [classes[int(it.labels[0])] for it in val] == [truth[it.path[:-5]].split()[0] for it in val]
    assert len(set(it.labels for it in val)) == 4
    # im2rec packing the same lists from the unpacked folders, same flags: the same bytes
    for name, root, shards in (("imagenet_train", net["train"], 3), ("imagenet_val", net["val"], 1)):
        shutil.copy(os.path.join(tar_set, name + ".lst"), tmp_path / (name + ".lst"))
        im2rec.pack_list(str(tmp_path / (name + ".lst")), root, im2rec.PackOptions(num_shards=shards))
    same_files(tar_set, tmp_path, [f for f in os.listdir(tmp_path) if f.endswith((".rec", ".idx", ".json"))])


def test_an_interrupted_run_continued_ends_byte_identical(net, tar_set, tmp_path, monkeypatch):
    real = preparing.encode_image

    def interrupted(job):
        if job[1].index == 13:  # inside the second of three shards (23 images)
            raise KeyboardInterrupt
        return real(job)
    monkeypatch.setattr(preparing, "encode_image", interrupted)
    out = tmp_path / "imagenet"
    result = run(
        "prepare", "--train", net["train_tar"], "--val", net["val_tar"], "--devkit", net["devkit"],
        "--out", out, *FLAGS, code=130)
    assert "run the same command to continue" in result.output
    # the finished shard waits under a hidden name: no reader sees a part of the split
    assert not [f for f in os.listdir(out) if f.endswith(".rec")]
    assert sorted(f for f in os.listdir(out) if ".rec" in f) == [".imagenet_train-00000.rec.part"]
    first = os.stat(out / ".imagenet_train-00000.rec.part").st_mtime_ns
    (out / ".imagenet_train-00001.rec.tmp-999999").write_bytes(b"a killed run's shard")
    monkeypatch.setattr(preparing, "encode_image", real)
    # another prepare writing the same folder (a process of its own: the lock is per process)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(out / preparing.LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        _one_line(run("prepare", "--train", net["train_tar"], "--val", net["val_tar"], "--devkit", net["devkit"],
                      "--out", out, *FLAGS, code=2), "another tools/imagenet.py prepare is writing it")
    finally:
        holder.kill()
        holder.wait(timeout=30)
    result = prepared(net, out, "tar")
    assert "shards 0..0 of 3 are done" in result.output
    assert os.stat(out / "imagenet_train-00000.rec").st_mtime_ns == first  # not packed again (renamed)
    same_files(tar_set, out)  # and the killed run's temp file is gone
    def written():
        return {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out) if f.endswith((".rec", ".idx", "std.json"))}
    before = written()
    assert "imagenet_train: 23 records" in prepared(net, out, "tar").output  # a finished set: nothing redone
    assert written() == before


def test_odd_files_are_stored_as_rgb_jpegs_both_backends_read_and_counted(net, tmp_path):
    from toolkit.data import build_loader
    result = prepared(net, tmp_path, "tar", "--pass-through")
    assert "odd files stored as RGB JPEGs: 1 CMYK JPEG, 1 grayscale JPEG, 1 PNG named .JPEG" in result.output
    odd = {}
    for rec, idx in [(str(tmp_path / f"imagenet_train-{k:05d}.rec"), str(tmp_path / f"imagenet_train-{k:05d}.idx"))
                     for k in range(3)]:
        for _, payload in recordio.RecordReader(rec):
            header, image = recordio.unpack(payload)
            assert im2rec.kind_of(image) == "rgb", header.id  # every record a 3-component JPEG
            odd[header.id] = image
    # stored unchanged where already RGB JPEGs (--pass-through), the odd three re-encoded
    paths = [it.path for it in lists.read_list(str(tmp_path / "imagenet_train.lst"))]
    for i, path in enumerate(paths):
        with open(os.path.join(net["train"], path), "rb") as f:
            assert (odd[i] == f.read()) != any(k in path for k in ("cmyk", "png", "grayscale")), path
    ev = dict(split="train", train=False, batch_size=23, image_size=16, eval_resize=16, workers=0)
    (xt, yt), = list(build_loader(str(tmp_path), backend="torch", **ev))
    (xd, yd), = list(build_loader(str(tmp_path), backend="dali", **ev))
    assert yt.tolist() == yd.tolist() and len(yt) == 23  # every record read by both
    fixed = [i for i, p in enumerate(paths) if any(k in p for k in ("cmyk", "png", "grayscale"))]
    assert len(fixed) == 3 and (xt[fixed] - xd[fixed]).abs().max() < 0.05  # flat images: resizes agree


def test_an_undecodable_image_is_named_skipped_and_labels_stay(tmp_path):
    net = fake.make_fake_imagenet(str(tmp_path / "src"), classes=3, per_class=2, val=3, odd=False, broken=True)
    result = run("prepare", "--train", net["train_tar"], "--val", net["val_tar"], "--devkit", net["devkit"],
                 "--out", tmp_path / "out", "--num-thread", "2")
    broken = [line for line in result.output.splitlines() if "skipped:" in line]
    assert len(broken) == 1 and "_broken.JPEG" in broken[0] and "1 undecodable, skipped" in result.output
    items = {it.index: it for it in lists.read_list(str(tmp_path / "out" / "imagenet_train.lst"))}
    recs = sorted((tmp_path / "out").glob("imagenet_train-*.rec"))  # 16 shards by default
    records = [recordio.unpack(p)[0] for rec in recs for _, p in recordio.RecordReader(str(rec))]
    assert len(records) == len(items) - 1
    assert all(items[h.id].labels[0] == h.label and "broken" not in items[h.id].path for h in records)


def test_check_passes_a_prepared_set_and_names_what_is_wrong(net, tar_set, tmp_path):
    ok = run("check", tar_set, "--devkit", net["devkit"], "--classes", 4, "--train-count", 23, "--val-count", 12,
             "--num-thread", 2)
    assert "imagenet_val: 12 records in 1 file(s), 0 undecodable, 0 wrong labels" in ok.output
    bad = run("check", tar_set, code=2)  # ImageNet's counts
    assert "classes.tsv lists 4 classes, expected 1000" in bad.output
    assert "imagenet_train: 23 records, expected 1281167" in bad.output
    # a val record with another label than the devkit's
    shutil.copytree(tar_set, tmp_path / "s")
    path = tmp_path / "s" / "imagenet_val.rec"
    payloads = [p for _, p in recordio.RecordReader(str(path))]
    with recordio.IndexedRecordWriter(str(tmp_path / "s" / "imagenet_val.idx"), str(path)) as w:
        for p in payloads:
            h, img = recordio.unpack(p)
            w.write_idx(h.id, recordio.pack((0, (h.label + 1) % 4 if h.id == 5 else h.label, h.id, 0), img))
    bad = run("check", tmp_path / "s", "--devkit", net["devkit"], "--classes", 4, "--train-count", 23,
              "--val-count", 12, code=2)
    assert "imagenet_val: 1 labels differ from the devkit (record id 5" in bad.output


def _one_line(result, text):
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert lines and len(lines) == 1 and text in lines[0], result.output


def test_bad_input_is_one_line_before_any_work(net, tar_set, tmp_path):
    base = ["--val", net["val_tar"], "--devkit", net["devkit"], "--out", tmp_path / "o"]
    _one_line(run("prepare", "--train", net["val_tar"], *base[:4], "--out", tmp_path / "o", code=2),
              "is not a per-synset tar (n01440764.tar): is this ILSVRC2012_img_train.tar?")
    kit = tmp_path / "kit.tar.gz"
    import tarfile
    with tarfile.open(kit, "w:gz") as tar:
        tar.add(net["val_tar"], "ILSVRC2012_devkit_t12/readme.txt")
    _one_line(run("prepare", "--train", net["train_tar"], "--val", net["val_tar"], "--devkit", kit,
                  "--out", tmp_path / "o", code=2), "no data/meta.mat inside")
    with tarfile.open(net["devkit"]) as tar:
        (tmp_path / "meta.mat").write_bytes(tar.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read())
    _one_line(run("prepare", "--train", net["train_tar"], "--val", net["val_tar"], "--devkit", tmp_path / "meta.mat",
                  "--out", tmp_path / "o", code=2), "no data/ILSVRC2012_validation_ground_truth.txt: give the devkit tarball")
    _one_line(run("prepare", "--train", net["train_tar"], "--val", net["train_tar"], "--devkit", net["devkit"],
                  "--out", tmp_path / "o", code=2), "no images: is this ILSVRC2012_img_val.tar")
    shutil.copytree(net["kaggle"], tmp_path / "k")
    with open(tmp_path / "k" / "LOC_val_solution.csv", "a") as f:
        f.write("ILSVRC2012_val_00000002,n99999999 1 2 3 4\n")  # a later row wins: a class with no train images
    _one_line(run("prepare", "--kaggle", tmp_path / "k", "--out", tmp_path / "o", code=2),
              "validation images of 1 synset(s) with no train class (n99999999)")
    assert not os.path.exists(tmp_path / "o")
    # a finished set of other settings: refused, nothing touched
    before = {f: os.stat(os.path.join(tar_set, f)).st_mtime_ns for f in os.listdir(tar_set)}
    _one_line(run("prepare", "--train", net["train_tar"], *base[:4], "--out", tar_set, *FLAGS, "--resize", 20, code=2),
              "holds a finished set of other settings (--resize 0 (now 20))")
    assert before == {f: os.stat(os.path.join(tar_set, f)).st_mtime_ns for f in os.listdir(tar_set)}


def test_records_of_an_unknown_run_are_refused(net, tmp_path):
    """No prepare.json: the settings of the files there are unknown, so nothing is continued or mixed."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "imagenet_train.rec").write_bytes(b"")
    _one_line(run("prepare", "--train", net["train"], "--val", net["val"], "--devkit", net["devkit"],
                  "--out", out, code=2), "not made by tools/imagenet.py prepare")
    assert os.listdir(out) == ["imagenet_train.rec"]


# ------------------------------------------------------------------ the manual route (item 5)

IM2REC = REPO / "tools" / "im2rec.py"



def _im2rec_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location("_im2rec_tool", str(IM2REC))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_im2rec_id_wnids_takes_the_devkit_or_meta_mat_and_refuses_a_sorted_list(net, tar_set, tmp_path, capsys):
    tool = _im2rec_tool()
    shutil.copy(os.path.join(tar_set, "classes.tsv"), tmp_path / "classes.tsv")
    gt = tmp_path / "gt.txt"
    import tarfile
    with tarfile.open(net["devkit"]) as tar:
        gt.write_bytes(tar.extractfile("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").read())
        (tmp_path / "meta.mat").write_bytes(tar.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read())
    for k, wnids in enumerate((net["devkit"], tmp_path / "meta.mat")):
        tool.main(["--list", "--imagenet-val-gt", str(gt), "--imagenet-id-wnids", str(wnids),
                   str(tmp_path / f"v{k}"), net["val"]])
        assert (tmp_path / f"v{k}.lst").read_text() == open(os.path.join(tar_set, "imagenet_val.lst")).read()
    mapping = os.path.join(net["kaggle"], "LOC_synset_mapping.txt")
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--list", "--imagenet-val-gt", str(gt), "--imagenet-id-wnids", mapping, str(tmp_path / "x"), net["val"]])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "in sorted order, as in LOC_synset_mapping.txt" in err[0]
    assert not (tmp_path / "x.lst").exists()


def test_manual_route_words_from_the_devkit_verify_totals_and_evaluate_names_words(net, tar_set, tmp_path, capsys):
    import numpy as np
    from toolkit.engine.evaluation import class_words, per_class_table
    tool = _im2rec_tool()
    # --synsets takes the devkit: classes.tsv with the words, as the one command writes it
    tool.main(["--list", "--recursive", "--no-shuffle", "--synsets", net["devkit"], str(tmp_path / "imagenet_train"),
               net["train"]])
    for name in ("classes.tsv", "imagenet_train.lst"):
        assert (tmp_path / name).read_text() == open(os.path.join(tar_set, name)).read()
    tool.main(["--verify", tar_set])
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["split imagenet_train: 23 records in 3 file(s), 0 undecodable, 4 labels, 0 problems",
                        "split imagenet_val: 12 records in 1 file(s), 0 undecodable, 4 labels, 0 problems"]
    # evaluate's per-class CSV: a words column from classes.tsv
    names = lists.read_classes(os.path.join(tar_set, "classes.tsv"))
    table = per_class_table(np.eye(5, dtype=np.int64), names + ["4"], class_words(tar_set, names + ["4"]))
    mapping = lists.read_synset_words(os.path.join(net["kaggle"], "LOC_synset_mapping.txt"))
    assert list(table.columns[:3]) == ["class", "name", "words"]  # a model with a class more: no words
    assert list(table["words"]) == [mapping[w] for w in sorted(mapping)] + [""] and "object" in table["words"][0]


def test_other_flags_are_refused_before_the_sources_are_read(net, tar_set, monkeypatch):
    """ImageNet's tar headers take minutes to read: a set of other flags is refused before that."""
    from toolkit.imagenet import sources

    def read(*_):
        raise AssertionError("the sources were read before the flags were compared")
    monkeypatch.setattr(sources, "open_route", read)
    _one_line(run("prepare", "--train", net["train_tar"], "--val", net["val_tar"], "--devkit", net["devkit"],
                  "--out", tar_set, *FLAGS[:2], "--num-thread", "1", "--quality", 90, code=2),
              "holds a finished set of other settings (--quality 95 (now 90))")


@pytest.mark.parametrize("cut", ["after", "inside"])
def test_a_commit_cut_short_is_finished_not_packed_again(net, tar_set, tmp_path, monkeypatch, cut):
    """Ctrl-C during a split's commit (held until its renames are done) or a kill inside it: the same
    command finishes the commit and packs nothing again (ImageNet's train split: hours)."""
    from toolkit import shards
    real_commit, real_replace = shards.commit, os.replace

    def cut_short(name, staged, record):
        if os.path.basename(name) != preparing.TRAIN:
            return real_commit(name, staged, record)
        calls = []

        def replace(src, dst):  # the record's own rename, then one shard's: then the process dies
            calls.append(src)
            if len(calls) == 3:
                raise KeyboardInterrupt
            real_replace(src, dst)
        if cut == "inside":
            monkeypatch.setattr(shards.os, "replace", replace)
        try:
            real_commit(name, staged, record)
        finally:
            monkeypatch.setattr(shards.os, "replace", real_replace)
        raise KeyboardInterrupt  # the Ctrl-C held during the commit
    monkeypatch.setattr(shards, "commit", cut_short)
    out = tmp_path / "imagenet"
    run("prepare", "--train", net["train_tar"], "--val", net["val_tar"], "--devkit", net["devkit"],
        "--out", out, *FLAGS, code=130)
    monkeypatch.setattr(shards, "commit", real_commit)

    def never(job):
        raise AssertionError(f"packed again: {job[1].path}")
    monkeypatch.setattr(preparing, "encode_image", never)
    monkeypatch.setattr(preparing, "_FILES", {})
    prepared_val_only = run("prepare", "--train", net["train_tar"], "--val", net["val_tar"], "--devkit",
                            net["devkit"], "--out", out, *FLAGS, code=1)
    assert "packed again: ILSVRC2012_val" in str(prepared_val_only.exception)  # train was not
    monkeypatch.undo()
    prepared(net, out, "tar")
    same_files(tar_set, out)
