"""tools/im2rec.py and toolkit.lists/im2rec/verify against MXNet 1.9.1's files and on bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torchvision.io as tvio

from tests.helpers import invoke_tool, run_tool
from toolkit import im2rec, lists, recordio, toy, verify
from toolkit.errors import UserError

IM2REC = "tools/im2rec.py"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A small class-folder image set (the toy generator: 3 classes x 8 images)."""
    return toy.make_toy_images(str(tmp_path_factory.mktemp("shapes")), images_per_class=8, num_classes=3)


def _records(prefix):
    r = recordio.IndexedRecordReader(prefix + ".idx", prefix + ".rec")
    return [(k, *recordio.unpack(r.read_idx(k))) for k in r.keys]


def _pixels(payload):
    return tvio.decode_image(torch.frombuffer(bytearray(payload), dtype=torch.uint8),
                             mode=tvio.ImageReadMode.RGB)


def test_list_mode_reproduces_mxnet_lists(mxnet191, tmp_path):
    imgs = mxnet191 / "im2rec" / "imgs"
    invoke_tool(IM2REC, "--list", "--recursive", tmp_path / "data", imgs)
    assert (tmp_path / "data.lst").read_text() == (mxnet191 / "im2rec" / "data.lst").read_text()
    lists.make_lists(str(tmp_path / "split"), str(imgs), recursive=True, chunks=2,
                     train_ratio=0.6, test_ratio=0.2)
    for name in [f"split_{c}_{s}.lst" for c in (0, 1) for s in ("train", "val", "test")]:
        assert (tmp_path / name).read_text() == (mxnet191 / "im2rec" / name).read_text(), name
    assert (tmp_path / "classes.tsv").read_text() == "0\t.\n1\tcat\n2\tdog\n3\tzebra\n"


def test_pass_through_pack_label_is_byte_exact(mxnet191, tmp_path):
    shutil.copy(mxnet191 / "im2rec" / "ml.lst", tmp_path / "ml.lst")
    run_tool(IM2REC, "--pass-through", "--pack-label", tmp_path / "ml", mxnet191 / "im2rec" / "imgs")
    assert (tmp_path / "ml.rec").read_bytes() == (mxnet191 / "im2rec" / "ml.rec").read_bytes()
    assert (tmp_path / "ml.idx").read_bytes() == (mxnet191 / "im2rec" / "ml.idx").read_bytes()


def test_encoded_records_match_mxnet_headers_and_pixels(mxnet191, tmp_path):
    shutil.copy(mxnet191 / "im2rec" / "data.lst", tmp_path / "data.lst")
    run_tool(IM2REC, "--resize", "16", "--num-thread", "2", tmp_path / "data", mxnet191 / "im2rec" / "imgs")
    ours, theirs = _records(str(tmp_path / "data")), _records(str(mxnet191 / "im2rec" / "data"))
    assert [(k, h.flag, h.label, h.id, h.id2) for k, h, _ in ours] == \
        [(k, h.flag, h.label, h.id, h.id2) for k, h, _ in theirs]
    for (_, _, a), (_, _, b) in zip(ours, theirs):
        # same size (MXNet's integer arithmetic); these fixture images are pixel noise shrunk more
        # than 2x, so our area averaging and MXNet's bilinear agree on the mean colour only
        pa, pb = _pixels(a).float(), _pixels(b).float()
        assert pa.shape == pb.shape
        assert torch.allclose(pa.mean((1, 2)), pb.mean((1, 2)), atol=4.0)


def test_thread_count_does_not_change_output_and_shards_spread_evenly(shapes, tmp_path):
    lists.make_lists(str(tmp_path / "s"), shapes, recursive=True)
    one, two = tmp_path / "one", tmp_path / "two"
    for out, threads in ((one, 1), (two, 2)):
        out.mkdir()
        im2rec.pack_list(str(tmp_path / "s.lst"), shapes,
                         im2rec.PackOptions(resize=40, num_thread=threads, num_shards=3), str(out))
    names = [f"s-{k:05d}" for k in range(3)]
    for n in names:
        assert (one / f"{n}.rec").read_bytes() == (two / f"{n}.rec").read_bytes()
        assert (one / f"{n}.idx").read_bytes() == (two / f"{n}.idx").read_bytes()
    counts = [len(_records(str(one / n))) for n in names]
    keys = [k for n in names for k, _, _ in _records(str(one / n))]
    assert counts == [8, 8, 8] and keys == [it.index for it in lists.read_list(str(tmp_path / "s.lst"))]
    assert min(_pixels(p).shape[1:].numel() and min(_pixels(p).shape[1:]) for _, _, p in
               _records(str(one / names[0]))) == 40


def test_mean_std_json_matches_decoded_pixels(shapes, tmp_path):
    lists.make_lists(str(tmp_path / "s"), shapes, recursive=True)
    im2rec.pack_list(str(tmp_path / "s.lst"), shapes, im2rec.PackOptions(pass_through=True))
    stats = json.load(open(tmp_path / "s.mean_std.json"))
    pix = torch.cat([_pixels(p).reshape(3, -1).double() for _, _, p in _records(str(tmp_path / "s"))], 1)
    assert stats["images"] == 24
    assert np.allclose(stats["mean"], pix.mean(1).numpy(), atol=1e-3)
    assert np.allclose(stats["std"], pix.std(1, unbiased=False).numpy(), atol=1e-3)


def test_corrupt_image_is_skipped_and_counted(shapes, tmp_path):
    root = tmp_path / "imgs"
    shutil.copytree(shapes, root)
    (root / "circle" / "circle_0003.jpg").write_bytes(b"not a jpeg")
    run = invoke_tool(IM2REC, "--list", "--recursive", tmp_path / "c", root)
    run = run_tool(IM2REC, "--num-thread", "2", tmp_path / "c", root)
    assert "circle_0003.jpg" in run.stderr and "23 records" in run.stdout and "1 skipped" in run.stdout
    assert len(_records(str(tmp_path / "c"))) == 23


def test_malformed_list_line_names_file_and_line(shapes, tmp_path):
    (tmp_path / "bad.lst").write_text("0\t1.000000\tcircle/circle_0000.jpg\n1\tcircle/x.jpg\n")
    run = invoke_tool(IM2REC, tmp_path / "bad", shapes, check=False)
    assert run.returncode == 2 and "bad.lst:2:" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "bad.rec").exists()


def test_out_of_range_jpeg_quality_is_one_clear_error(shapes, tmp_path):
    lists.make_lists(str(tmp_path / "q"), shapes, recursive=True)
    run = invoke_tool(IM2REC, "--quality", "150", tmp_path / "q", shapes, check=False)
    assert run.returncode == 2 and run.stderr.strip() == \
        "Error: --quality 150: JPEG quality runs from 1 to 100 (MXNet's default: 95)"
    assert not (tmp_path / "q.rec").exists()


def test_read_list_accepts_integer_labels_and_any_whitespace(tmp_path):
    (tmp_path / "x.lst").write_text("3\t2\tdog/a.jpg\n7 1  0.5   cat/b.jpg\n\n")
    items = list(lists.read_list(str(tmp_path / "x.lst")))
    assert items == [lists.ListItem(3, "dog/a.jpg", (2.0,)), lists.ListItem(7, "cat/b.jpg", (1.0, 0.5))]


def test_kaggle_names_and_imagenet_val_labels(tmp_path):
    root = tmp_path / "kaggle"
    root.mkdir()
    for name in ("dog.1.jpg", "cat.10.jpg", "cat.2.jpg"):
        shutil.copy(toy.make_toy_images(str(tmp_path / "t"), 2, 2) + "/circle/circle_0000.jpg", root / name)
    lists.make_lists(str(tmp_path / "k"), str(root), label_from_name=True, shuffle=False)
    assert [(it.path, it.labels) for it in lists.read_list(str(tmp_path / "k.lst"))] == \
        [("cat.10.jpg", (0.0,)), ("cat.2.jpg", (0.0,)), ("dog.1.jpg", (1.0,))]
    (tmp_path / "gt.txt").write_text("2\n1\n2\n")
    items = lists.imagenet_val_items(str(root), str(tmp_path / "gt.txt"), ["n2", "n1"], ["n1", "n2"])
    assert [it.labels[0] for it in items] == [0.0, 1.0, 0.0]


def test_verify_reports_truncation_and_rebuilds_missing_index(shapes, tmp_path):
    lists.make_lists(str(tmp_path / "v"), shapes, recursive=True)
    im2rec.pack_list(str(tmp_path / "v.lst"), shapes, im2rec.PackOptions(pass_through=True))
    idx = (tmp_path / "v.idx").read_bytes()
    os.remove(tmp_path / "v.idx")
    run = invoke_tool(IM2REC, "--verify", "--fix-index", tmp_path / "v")
    assert (tmp_path / "v.idx").read_bytes() == idx and "24 records" in run.stdout
    data = (tmp_path / "v.rec").read_bytes()
    last = recordio.read_index(str(tmp_path / "v.idx"))[-1][1]
    (tmp_path / "v.rec").write_bytes(data[:last + 4])  # the last record's header cut in half
    run = invoke_tool(IM2REC, "--verify", tmp_path / "v", check=False)
    assert run.returncode == 2 and f"truncated record header at offset {last}" in run.stdout
    (tmp_path / "v.rec").write_bytes(data[:last])  # now the .idx points past the end
    report = verify.verify_rec(str(tmp_path / "v.rec"))
    assert report.records == 23 and any(f"offset {last} is past the end" in p for p in report.problems)


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """600 toy images: packing them as 300 px PNGs takes seconds, time to interrupt it."""
    return toy.make_toy_images(str(tmp_path_factory.mktemp("many")), images_per_class=150, num_classes=4)


def test_killed_pack_leaves_nothing_under_final_names(tmp_path, many_images):
    root = many_images
    lists.make_lists(str(tmp_path / "k"), root, recursive=True)
    proc = subprocess.Popen([sys.executable, IM2REC, "--resize", "300", "--encoding", ".png",
                             str(tmp_path / "k"), root], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not any(".k.rec.tmp" in f for f in os.listdir(tmp_path)):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = os.listdir(tmp_path)
    assert any(".k.rec.tmp" in f for f in left), left  # it was killed mid-write
    assert not {"k.rec", "k.idx", "k.mean_std.json"} & set(left)


def test_ctrl_c_stops_the_workers_and_removes_the_partial_file(tmp_path, many_images):
    root = many_images
    lists.make_lists(str(tmp_path / "k"), root, recursive=True)
    proc = subprocess.Popen([sys.executable, IM2REC, "--resize", "300", "--encoding", ".png", "--num-thread",
                             "2", str(tmp_path / "k"), root], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(".k.rec.tmp" in f for f in os.listdir(tmp_path)):
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the tool and its workers
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err.strip().startswith("interrupted:") and "Traceback" not in err
    assert not {"k.rec", "k.idx", "k.mean_std.json"} & set(os.listdir(tmp_path))
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # no worker left behind in the group
        os.killpg(proc.pid, 0)


def test_toy_dataset_is_deterministic_and_varied(tmp_path):
    a = toy.make_toy_images(str(tmp_path / "a"), images_per_class=3, num_classes=10, seed=1)
    b = toy.make_toy_images(str(tmp_path / "b"), images_per_class=3, num_classes=10, seed=1)
    files = sorted(os.path.relpath(os.path.join(d, f), a) for d, _, fs in os.walk(a) for f in fs)
    assert len(files) == 30 and len(set(os.path.dirname(f) for f in files)) == 10
    for f in files:
        assert open(os.path.join(a, f), "rb").read() == open(os.path.join(b, f), "rb").read()
    sizes = {tuple(tvio.decode_image(os.path.join(a, f)).shape[1:]) for f in files}
    assert len(sizes) > 20 and all(64 <= s <= 160 for hw in sizes for s in hw)
    root = toy.ensure_toy_dataset(str(tmp_path / "ds"), images_per_class=6, num_classes=10, quiet=True)
    n_train = len(recordio.read_index(os.path.join(root, "toy_train.idx")))
    n_val = len(recordio.read_index(os.path.join(root, "toy_val.idx")))
    assert (n_train, n_val) == (48, 12)
    assert lists.read_classes(os.path.join(root, "classes.tsv")) == sorted(toy.CLASSES)


def _val_folder(tmp_path, n=4):
    root = tmp_path / "val"
    root.mkdir()
    src = toy.make_toy_images(str(tmp_path / "t"), 2, 2) + "/circle/circle_0000.jpg"
    for k in range(1, n + 1):
        shutil.copy(src, root / f"ILSVRC2012_val_{k:08d}.JPEG")
    return root


def _val_labels(prefix):
    return [int(it.labels[0]) for it in lists.read_list(str(prefix) + ".lst")]


def test_imagenet_val_labels_follow_the_train_order_or_are_refused(tmp_path):
    root = _val_folder(tmp_path)
    (tmp_path / "gt.txt").write_text("1\n2\n3\n1\n")
    # devkit IDs 1..3 are these wnids: not sorted, as in the real devkit
    (tmp_path / "wnids.txt").write_text("n00000003\nn00000001\nn00000002\n")
    gt = ["--imagenet-val-gt", tmp_path / "gt.txt", "--imagenet-id-wnids", tmp_path / "wnids.txt"]
    # no classes.tsv beside the prefix: the sorted wnids, the train list's order (was: devkit order)
    proc = invoke_tool(IM2REC, "--list", *gt, tmp_path / "a" / "val", root)
    assert _val_labels(tmp_path / "a" / "val") == [2, 0, 1, 2] and "sorted wnids" in proc.stdout
    # the train classes.tsv given with --classes (or found beside the prefix) decides
    (tmp_path / "train_classes.tsv").write_text("0\tn00000002\n1\tn00000003\n2\tn00000001\n")
    invoke_tool(IM2REC, "--list", *gt, "--classes", tmp_path / "train_classes.tsv", tmp_path / "b" / "val", root)
    assert _val_labels(tmp_path / "b" / "val") == [1, 2, 0, 1]
    shutil.copy(tmp_path / "train_classes.tsv", tmp_path / "b" / "classes.tsv")
    invoke_tool(IM2REC, "--list", *gt, tmp_path / "b" / "val2", root)
    assert _val_labels(tmp_path / "b" / "val2") == [1, 2, 0, 1]
    # without the wnid of each ID the labels would be the devkit's order: refused
    proc = invoke_tool(IM2REC, "--list", "--imagenet-val-gt", tmp_path / "gt.txt", tmp_path / "c" / "val", root,
                      check=False)
    assert proc.returncode == 2 and "give --imagenet-id-wnids FILE" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "c" / "val.lst").exists()


@pytest.mark.parametrize("flag", ["--imagenet-val-gt", "--imagenet-id-wnids", "--synsets", "--classes"])
def test_a_missing_list_mode_file_is_one_line(tmp_path, flag, shapes):
    (tmp_path / "gt.txt").write_text("1\n")
    extra = [] if flag == "--imagenet-val-gt" else ["--imagenet-val-gt", tmp_path / "gt.txt"]
    if flag == "--synsets":
        extra = ["--recursive"]
    proc = invoke_tool(IM2REC, "--list", flag, tmp_path / "nope.txt", *extra, tmp_path / "x", shapes, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"Error: {flag} {tmp_path}/nope.txt: file not found"]
    assert not list(tmp_path.glob("x*.lst"))


def test_synsets_without_class_folders_is_one_line(tmp_path, shapes):
    (tmp_path / "words.txt").write_text("n01440764 tench\n")
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(os.path.join(shapes, "circle", "circle_0000.jpg"), flat / "a.jpg")
    proc = invoke_tool(IM2REC, "--list", "--synsets", tmp_path / "words.txt", tmp_path / "x", flat, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "Error: --synsets names the classes of class folders: add --recursive"]
    assert not (tmp_path / "x.lst").exists()


def test_list_mode_makes_the_prefix_folder(tmp_path, shapes):
    invoke_tool(IM2REC, "--list", "--recursive", tmp_path / "new" / "deeper" / "set", shapes)
    assert (tmp_path / "new" / "deeper" / "set.lst").exists() and (tmp_path / "new" / "deeper" / "classes.tsv").exists()


def test_packing_where_every_image_fails_exits_2_and_leaves_no_records(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for k in range(6):
        (root / f"{k}.jpg").write_bytes(b"not an image")
    invoke_tool(IM2REC, "--list", tmp_path / "bad", root)
    proc = run_tool(IM2REC, tmp_path / "bad", root, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert errors == [f"Error: {tmp_path}/bad.lst: none of its 6 images could be read (warnings above); "
                      f"is {root} the folder the list was made from?"]
    assert not list(tmp_path.glob("bad*.rec")) and not list(tmp_path.glob("bad*.idx"))


def test_a_packer_that_is_killed_ends_packing_with_one_line(monkeypatch):
    """A packer killed (the OOM killer) was BrokenProcessPool's traceback; now one line (Stalled)."""
    import signal
    from toolkit import im2rec as packing
    from toolkit.errors import Stalled

    def encode(job):
        if job == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return job
    monkeypatch.setattr(packing, "encode_item", encode)  # the packers are forked: they see it
    with pytest.raises(Stalled, match="a packer process died .* lower --num-thread"):
        list(packing._encoded(iter(range(40)), 2))


def test_imagenet_val_labels_from_all_of_meta_mat_or_a_per_image_list(tmp_path):
    """meta.mat lists 1860 synsets, IDs 1..1000 the leaves (the train folders) and then 860 internal
    nodes: a wnid file of all of them gives the leaves' labels; a file with a wnid twice (a per-image
    list such as imagenet_2012_validation_synset_labels.txt) is not one wnid per ID: refused."""
    root = _val_folder(tmp_path)
    (tmp_path / "gt.txt").write_text("1\n2\n3\n1\n")
    (tmp_path / "all.txt").write_text("n00000003\nn00000001\nn00000002\nn00000000\nn00000009\n")
    invoke_tool(IM2REC, "--list", "--imagenet-val-gt", tmp_path / "gt.txt", "--imagenet-id-wnids",
               tmp_path / "all.txt", tmp_path / "a" / "val", root)
    assert _val_labels(tmp_path / "a" / "val") == [2, 0, 1, 2]
    (tmp_path / "per_image.txt").write_text("n00000003\nn00000001\nn00000002\nn00000003\n")
    proc = invoke_tool(IM2REC, "--list", "--imagenet-val-gt", tmp_path / "gt.txt", "--imagenet-id-wnids",
                      tmp_path / "per_image.txt", tmp_path / "b" / "val", root, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "n00000003 on lines 1 and 4" in proc.stderr and not (tmp_path / "b" / "val.lst").exists()


def test_imagenet_val_labels_go_by_the_number_in_the_name_or_are_refused(tmp_path):
    """One image missing and a stray one in its place: the count matches, yet by position every label
    after the gap would be the next image's."""
    root = _val_folder(tmp_path)
    (root / "ILSVRC2012_val_00000002.JPEG").rename(root / "zz_stray.jpg")
    (tmp_path / "gt.txt").write_text("1\n2\n3\n1\n")
    with pytest.raises(UserError, match=r"ILSVRC2012_val_00000003.JPEG is image 2 of .*: expected "
                                        r"ILSVRC2012_val_00000001 to ILSVRC2012_val_00000004"):
        lists.imagenet_val_items(str(root), str(tmp_path / "gt.txt"), ["n1", "n2", "n3"], ["n1", "n2", "n3"])
