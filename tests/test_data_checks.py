"""Checks before the first step (issue 14 items 3 and 7): the number of classes and every label,
output folders, the mean/std file; and tools/evaluate.py with more classes than classes.tsv."""
import json
import logging

import numpy as np
import pytest
import torch
import torchvision.io as tvio

from tests.helpers import invoke_tool
from toolkit import recordio
from toolkit.data import discovery
from toolkit.engine import checkpoint, dist, preflight
from toolkit.engine.config import make_config
from toolkit.errors import UserError

JPEG = tvio.encode_jpeg(torch.full((3, 12, 12), 128, dtype=torch.uint8)).numpy().tobytes()


def write(path, labels, ids=None):
    """A split NAME.rec/.idx with these labels (a tuple: a multi-label record)."""
    with recordio.IndexedRecordWriter(str(path) + ".idx", str(path) + ".rec") as w:
        for k, lab in enumerate(labels):
            key = ids[k] if ids else k
            label = np.array(lab, np.float32) if isinstance(lab, tuple) else float(lab)
            w.write_idx(key, recordio.pack((0, label, key, 0), JPEG))


def one_error_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and "Error: " in lines[0], proc.stderr
    return lines[0]


def test_labels_of_reads_headers_only_and_matches_a_full_read(tmp_path):
    # multi-label records count their first label; key 0xCED7230A puts the RecordIO magic inside
    # the header, where dmlc-core splits the record: that one is read the slow way
    labels = [3, (5, 1, 2), 0, 7.0, (2, 9)]
    write(tmp_path / "s_train", labels, ids=[0, 1, recordio.MAGIC, 3, 4])
    records = discovery.open_split(str(tmp_path), "train")
    slow = [recordio.unpack(records.read(i))[0] for i in range(len(records))]
    slow = [h.label if h.flag == 0 else h.label[0] for h in slow]
    assert discovery.labels_of(records).tolist() == [3, 5, 0, 7, 2] == [int(v) for v in slow]
    assert discovery.labels_of(records).dtype == np.int64


def test_num_classes_without_classes_tsv_comes_from_the_train_labels_and_is_logged(tmp_path, caplog):
    write(tmp_path / "m_train", [0, 4, 2, 1])   # MXNet-made: no classes.tsv
    write(tmp_path / "m_val", [4, 0])
    env = dist.setup()
    with caplog.at_level(logging.INFO, logger="t"):
        cfg = preflight.settle_num_classes(make_config("resnet20", data=str(tmp_path)), env,
                                           logging.getLogger("t"))
    assert cfg.num_classes == 5  # not 1000
    assert "no classes.tsv: 5 classes, from the largest label of split 'train' + 1" in caplog.text


@pytest.mark.parametrize("labels, num_classes, message", [
    ([0, 1, 2, 1], 2, "m_train.rec key 2: label 2 is outside 0..1 (1 such records in the split); "
                      "pass --num-classes 3 (or more)"),
    ([0, -1, 1], 2, "m_train.rec key 1: label -1 is outside 0..1"),
    ([0, 1.5, 1], 2, "m_train.rec key 1: label 1.5 is not an integer"),
    ([0, float("nan")], 2, "m_train.rec key 1: label nan is outside 0..1"),
])
def test_a_bad_label_is_one_line_naming_the_first_bad_record(tmp_path, labels, num_classes, message):
    write(tmp_path / "m_train", labels)
    with pytest.raises(UserError, match=None) as err:
        preflight.settle_num_classes(make_config("resnet20", data=str(tmp_path), num_classes=num_classes),
                                     dist.setup(), logging.getLogger("t"))
    assert message in err.value.message and "\n" not in err.value.message


def test_a_val_label_beyond_the_train_labels_is_caught_before_training(tmp_path):
    write(tmp_path / "m_train", [0, 1, 2])
    write(tmp_path / "m_val", [0, 3])
    with pytest.raises(UserError, match=r"m_val.rec key 1: label 3 is outside 0..2.*split 'val' has labels"):
        preflight.settle_num_classes(make_config("resnet20", data=str(tmp_path)), dist.setup(),
                                     logging.getLogger("t"))


def test_train_tool_stops_before_step_0_on_a_label_beyond_num_classes(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    write(data / "m_train", [0, 1, 9, 1, 0, 1, 0, 1])
    proc = invoke_tool("tools/train.py", "--recipe", "resnet20", "--data", data, "--num-classes", "4",
                       "--image-size", "32", "--batch-size", "2", "--workers", "0",
                       "--checkpoints-dir", tmp_path / "ck", "--logs-dir", tmp_path / "logs", check=False)
    line = one_error_line(proc)
    assert line.endswith(f"Error: {data}/m_train.rec key 2: label 9 is outside 0..3 (1 such records in the "
                         "split); pass --num-classes 10 (or more), or fix the labels")
    assert "Epoch[" not in (tmp_path / "logs" / "resnet20.log").read_text()


@pytest.mark.parametrize("flag", ["--checkpoints-dir", "--logs-dir"])
def test_an_unwritable_output_folder_is_one_line_before_any_work(tmp_path, flag):
    (tmp_path / "file").write_text("")
    data = tmp_path / "d"
    data.mkdir()
    write(data / "m_train", [0, 1] * 4)
    dirs = {"--checkpoints-dir": tmp_path / "ck", "--logs-dir": tmp_path / "logs"}
    dirs[flag] = tmp_path / "file" / "sub"  # under a file: no folder can be made there (even as root)
    proc = invoke_tool("tools/train.py", "--recipe", "resnet20", "--data", data, "--image-size", "32",
                       "--batch-size", "2", "--workers", "0", "--epochs", "1",
                       *[str(v) for kv in dirs.items() for v in kv], check=False)
    assert one_error_line(proc).endswith(f"Error: {flag} {tmp_path}/file/sub: cannot write there (Not a "
                                         f"directory); choose a writable folder with {flag}")
    assert not list(tmp_path.glob("**/*.pt"))


@pytest.mark.parametrize("content, reason", [
    ("{not json", "JSONDecodeError"),
    ('{"mean": [1, 2, 3]}', "KeyError"),
    ('{"mean": [1, 2, 3], "std": [1, 0, 1]}', "3 positive standard deviations"),
])
def test_a_malformed_mean_std_file_is_one_line(tmp_path, content, reason):
    write(tmp_path / "m_train", [0, 1])
    (tmp_path / "m_train.mean_std.json").write_text(content)
    with pytest.raises(UserError, match=reason) as err:
        discovery.dataset_info(str(tmp_path))
    assert "m_train.mean_std.json" in err.value.message and "delete the file" in err.value.message
    (tmp_path / "m_train.mean_std.json").write_text(json.dumps({"mean": [1, 2, 3], "std": [4, 5, 6]}))
    assert discovery.dataset_info(str(tmp_path)).std == (4.0, 5.0, 6.0)


def test_evaluate_takes_a_model_with_more_classes_than_classes_tsv(tmp_path):
    from toolkit.registry import build_model
    data = tmp_path / "d"
    data.mkdir()
    write(data / "m_val", [0, 1, 2, 1])
    (data / "classes.tsv").write_text("0\ta\n1\tb\n2\tc\n")
    cfg = make_config("resnet20", data=str(data), num_classes=5, image_size=32)
    torch.manual_seed(0)
    model = build_model(cfg.recipe, **cfg.model_kwargs())
    checkpoint.save(str(tmp_path / "ck" / "m-0001.pt"), {"model": model.state_dict(), "config": dict(vars(cfg))})
    proc = invoke_tool("tools/evaluate.py", "--checkpoints-dir", tmp_path / "ck", "--workers", "0",
                       "--out-dir", tmp_path / "out", "--json")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["images"] == 4 and result["undecodable"] == 0
    names = (tmp_path / "out" / "m-0001-val-per-class.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in names[1:]] == ["a", "b", "c", "3", "4"]
    # an undecodable record is left out and named, not replaced by another (counted twice)
    with recordio.IndexedRecordWriter(str(data / "m_val.idx"), str(data / "m_val.rec")) as w:
        for k in range(4):
            w.write_idx(k, recordio.pack((0, float(k % 3), k, 0), b"broken" if k == 2 else JPEG))
    proc = invoke_tool("tools/evaluate.py", "--checkpoints-dir", tmp_path / "ck", "--workers", "0",
                       "--out-dir", tmp_path / "out", "--json")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["images"] == 3 and result["undecodable"] == 1
    assert result["undecodable_records"][0].startswith(f"{data}/m_val.rec key 2 offset ")
    assert f"1 undecodable record(s) not counted: {data}/m_val.rec key 2 offset" in proc.stdout
    # a label the model has no output for is the data's fault, named with its record
    write(data / "m_val", [0, 1, 7])
    line = one_error_line(invoke_tool("tools/evaluate.py", "--checkpoints-dir", tmp_path / "ck", check=False))
    assert "m_val.rec key 2: label 7 is outside 0..4" in line and "was trained for 5 classes" in line


def test_a_val_rec_without_its_idx_is_one_line_not_a_run_without_validation(tmp_path):
    """A dataset copied without its .idx files: training would go on without validation, silently."""
    write(tmp_path / "m_train", [0, 1, 2])
    write(tmp_path / "m_val", [0, 1])
    (tmp_path / "m_val.idx").unlink()
    with pytest.raises(UserError, match=r"m_val.idx: index file missing for .*m_val.rec"):
        preflight.settle_num_classes(make_config("resnet20", data=str(tmp_path)), dist.setup(),
                                     logging.getLogger("t"))
    (tmp_path / "m_val.rec").unlink()  # no val split at all: training without validation, as before
    assert preflight.settle_num_classes(make_config("resnet20", data=str(tmp_path)), dist.setup(),
                                        logging.getLogger("t")).num_classes == 3


def test_a_stale_idx_pointing_inside_the_rec_names_the_idx_and_how_to_rebuild_it(tmp_path):
    """Was BufferError ('cannot close exported pointers exist') from the header reader's memory map,
    hiding the real error; the loaders' reads now name the .idx line too."""
    write(tmp_path / "s_train", [0, 1, 2])
    idx = tmp_path / "s_train.idx"
    rows = [line.split("\t") for line in idx.read_text().splitlines()]
    rows[2][1] = str(int(rows[2][1]) + 8)  # inside the record before: another packing's offsets
    idx.write_text("".join(f"{k}\t{o}\n" for k, o in rows))
    records = discovery.open_split(str(tmp_path), "train")
    message = (f"{idx}:3: offset {rows[2][1]} is not the start of a record of {tmp_path / 's_train.rec'}: the .idx "
               "does not match the .rec (stale, or from another packing); delete the .idx and rebuild it: "
               f"tools/im2rec.py --verify --fix-index {tmp_path / 's_train'}")
    for read in (discovery.header_labels, lambda r: r.read(2)):
        with pytest.raises(UserError) as err:
            read(records)
        assert err.value.message == message
