"""A split is exactly the shard set its last packing wrote (toolkit/shards.py): a re-pack replaces
the old set at once, and discovery and --verify refuse a mixture in one line."""
import json
import os
import shutil
import signal

import pytest

from toolkit import im2rec, lists, toy, verify
from toolkit.data import discovery
from toolkit.errors import UserError

OPTS = dict(pass_through=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """3 classes x 8 images of the toy generator."""
    return toy.make_toy_images(str(tmp_path_factory.mktemp("img")), images_per_class=8, num_classes=3)


def pack(images, folder, shards, **kw):
    folder.mkdir(exist_ok=True)
    if not (folder / "s_train.lst").exists():
        lists.make_lists(str(folder / "s_train"), images, recursive=True)
    return im2rec.pack_list(str(folder / "s_train.lst"), images, im2rec.PackOptions(num_shards=shards, **OPTS, **kw))


def records(folder) -> int:
    return len(discovery.open_split(str(folder), "train"))


def refusal(folder) -> str:
    with pytest.raises(UserError) as err:
        discovery.split_files(str(folder), "train")
    assert "\n" not in err.value.message
    return err.value.message


def verify_problems(folder):
    return [p for r in verify.verify_prefix(str(folder / "s_train")) for p in r.problems]


def recs(folder):
    return sorted(p.name for p in folder.glob("*.rec"))


def test_packing_again_with_fewer_shards_replaces_the_old_set(images, tmp_path):
    d = tmp_path / "d"
    pack(images, d, 4)
    assert records(d) == 24
    pack(images, d, 2)
    assert recs(d) == ["s_train-00000.rec", "s_train-00001.rec"] and records(d) == 24
    assert not [f for f in os.listdir(d) if f.endswith(".idx") and not f.startswith("s_train-0000")]
    assert verify_problems(d) == []
    pack(images, d, 1)  # and back to one file: no shard left beside it
    assert recs(d) == ["s_train.rec"] and records(d) == 24
    assert sorted(f for f in os.listdir(d) if not f.startswith(".")) == \
        ["classes.tsv", "s_train.idx", "s_train.lst", "s_train.mean_std.json", "s_train.rec"]
    saved = json.loads((d / "s_train.mean_std.json").read_text())
    assert saved["images"] == 24 and [s["rec"] for s in saved["shards"]] == ["s_train.rec"]


def test_a_mixture_of_two_packings_is_refused_in_one_line(images, tmp_path):
    d = tmp_path / "d"
    pack(images, d, 2)
    for ext in ("rec", "idx"):  # a stale shard of an earlier 3-shard packing
        shutil.copy(d / f"s_train-00001.{ext}", d / f"s_train-00002.{ext}")
    message = refusal(d)
    assert message.startswith(f"{d}: split 'train': s_train-00002.rec: not in the shard set the last packing "
                              "of s_train wrote (s_train-00000.rec, s_train-00001.rec; s_train.mean_std.json)")
    assert "pack s_train.lst again with tools/im2rec.py" in message
    assert any("s_train-00002.rec: not in the shard set" in p for p in verify_problems(d))
    for ext in ("rec", "idx"):
        os.remove(d / f"s_train-00002.{ext}")
    assert records(d) == 24

    # one file next to shards
    for ext in ("rec", "idx"):
        shutil.copy(d / f"s_train-00001.{ext}", d / f"s_train.{ext}")
    assert "s_train.rec and s_train-00000.rec, s_train-00001.rec are two packings of one list" in refusal(d)
    for ext in ("rec", "idx"):
        os.remove(d / f"s_train.{ext}")

    # a shard of another packing with the same name (another size)
    with open(d / "s_train-00001.rec", "ab") as f:
        f.write(b"\0" * 8)
    assert "s_train-00001.rec (or its .idx): not the size the last packing wrote" in refusal(d)


def test_sets_packed_before_the_record_listed_them_are_checked_by_count_and_numbering(images, tmp_path):
    """Folders packed by an earlier version (NAME.mean_std.json without the set) or by MXNet (none)."""
    d = tmp_path / "d"
    pack(images, d, 4)
    stats = json.loads((d / "s_train.mean_std.json").read_text())
    del stats["shards"]
    (d / "s_train.mean_std.json").write_text(json.dumps(stats))
    assert records(d) == 24
    os.rename(d / "s_train-00003.rec", d / "s_train-00004.rec")
    os.rename(d / "s_train-00003.idx", d / "s_train-00004.idx")
    assert "shard 00003 is missing" in refusal(d)
    os.rename(d / "s_train-00004.rec", d / "s_train-00003.rec")
    os.rename(d / "s_train-00004.idx", d / "s_train-00003.idx")
    stats["images"] = 12  # the earlier code's 4-then-2 shards: 2 new shards, 2 stale ones
    (d / "s_train.mean_std.json").write_text(json.dumps(stats))
    assert "hold 24 records, but the last packing of s_train wrote 12" in refusal(d)
    os.remove(d / "s_train.mean_std.json")  # MXNet's: nothing to compare with, the numbering is whole
    assert records(d) == 24


def test_a_packing_stopped_before_its_commit_leaves_the_earlier_set_as_it_was(images, tmp_path, monkeypatch):
    d = tmp_path / "d"
    pack(images, d, 2)
    before = {f: (d / f).read_bytes() for f in os.listdir(d) if os.path.isfile(d / f)}
    calls = []
    finish = im2rec.recordio.IndexedRecordWriter.finish

    def interrupted_at_the_third_shard(self):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return finish(self)
    monkeypatch.setattr(im2rec.recordio.IndexedRecordWriter, "finish", interrupted_at_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        pack(images, d, 4)
    assert {f: (d / f).read_bytes() for f in os.listdir(d)} == before  # no temp file left either
    assert records(d) == 24


def test_a_signal_during_the_commit_waits_for_the_last_rename_and_a_crash_in_it_is_refused(images, tmp_path,
                                                                                          monkeypatch):
    d = tmp_path / "d"
    pack(images, d, 4)
    replace = os.replace

    def replace_and_signal(src, dst):
        os.kill(os.getpid(), signal.SIGINT)
        replace(src, dst)
    monkeypatch.setattr(os, "replace", replace_and_signal)
    with pytest.raises(KeyboardInterrupt):
        pack(images, d, 2)
    monkeypatch.undo()
    assert recs(d) == ["s_train-00000.rec", "s_train-00001.rec"] and records(d) == 24

    moved = []

    def crash_after_one(src, dst):  # a kill -9 (or a full disk) in the middle of the renames
        if len(moved) == 1 and dst.endswith(".rec"):
            raise OSError(28, "No space left on device")
        moved.append(dst)
        replace(src, dst)
    monkeypatch.setattr(os, "replace", crash_after_one)
    with pytest.raises(OSError):
        pack(images, d, 3)
    monkeypatch.undo()
    message = refusal(d)
    assert "s_train-00000.rec (or its .idx): not the size the last packing wrote" in message \
        or "missing, though the last packing wrote it" in message, message


def test_a_list_packed_again_by_mxnet_im2rec_after_ours_names_the_stale_record(images, tmp_path):
    """MXNet's im2rec writes NAME.rec/.idx and no NAME.mean_std.json: ours, of the earlier packing, then
    lists other sizes. The refusal names the way out that keeps MXNet's files (delete our record),
    and without it the folder reads as any MXNet-made one."""
    d = tmp_path / "d"
    pack(images, d, 1)
    with open(d / "s_train.rec", "ab") as f:  # MXNet's bytes differ from ours (other encoder)
        f.write(b"\0" * 8)
    message = refusal(d)
    assert "not the size the last packing wrote" in message
    assert message.endswith("; or, if another tool (MXNet's im2rec) packed it since, delete "
                            "s_train.mean_std.json (its mean/std are the earlier packing's)")
    os.remove(d / "s_train.mean_std.json")
    assert len(discovery.split_files(str(d), "train")) == 1
