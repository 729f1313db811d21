"""RecordIO against files written by the real MXNet 1.9.1 (tests/data/mxnet191)."""
import json
import os
import pickle
import struct

import numpy as np
import pytest

from toolkit import recordio


def _expected_raw(mxnet191):
    return [bytes.fromhex(h) for h in json.load(open(mxnet191 / "raw_expected_payloads.json"))]


def test_reads_raw_records_by_index_and_sequentially(mxnet191):
    expected = _expected_raw(mxnet191)
    reader = recordio.IndexedRecordReader(str(mxnet191 / "raw.idx"), str(mxnet191 / "raw.rec"))
    assert list(reader.keys) == list(range(len(expected)))
    assert [reader.read_idx(k) for k in reader.keys] == expected
    assert [p for _, p in recordio.RecordReader(str(mxnet191 / "raw.rec"))] == expected


def test_writer_reproduces_raw_rec_and_idx_byte_for_byte(mxnet191, tmp_path):
    with recordio.IndexedRecordWriter(str(tmp_path / "raw.idx"), str(tmp_path / "raw.rec")) as w:
        for i, payload in enumerate(_expected_raw(mxnet191)):
            w.write_idx(i, payload)
    assert (tmp_path / "raw.rec").read_bytes() == (mxnet191 / "raw.rec").read_bytes()
    assert (tmp_path / "raw.idx").read_bytes() == (mxnet191 / "raw.idx").read_bytes()


def test_split_records_use_cflags_1_2_3(mxnet191):
    data = (mxnet191 / "raw.rec").read_bytes()
    reader = recordio.IndexedRecordReader(str(mxnet191 / "raw.idx"), str(mxnet191 / "raw.rec"))
    off = int(reader.offsets[5])  # b'xyz0' MAGIC b'1234' MAGIC b'tail!': three parts
    flags = []
    for _ in range(3):
        magic, lrec = struct.unpack_from("<II", data, off)
        assert magic == recordio.MAGIC
        flags.append(lrec >> 29)
        off += 8 + ((lrec & (2**29 - 1)) + 3) // 4 * 4
    assert flags == [1, 2, 3]


def test_image_headers_match_mxnet_pack_and_unpack(mxnet191, tmp_path):
    items = json.load(open(mxnet191 / "packed_expected.json"))
    reader = recordio.IndexedRecordReader(str(mxnet191 / "packed.idx"), str(mxnet191 / "packed.rec"))
    w = recordio.IndexedRecordWriter(str(tmp_path / "p.idx"), str(tmp_path / "p.rec"))
    for item in items:
        rec = reader.read_idx(item["key"])
        assert rec.hex() == item["packed_hex"]
        header, payload = recordio.unpack(rec)
        assert (header.flag, header.id, header.id2) == (item["flag"], item["id"], item["id2"])
        assert np.allclose(header.label, item["label"]) and payload.hex() == item["payload_hex"]
        label = item["label"] if item["flag"] == 0 else np.array(item["label"], np.float32)
        assert pack_like_mxnet(item, label).hex() == item["packed_hex"]
        assert np.allclose(recordio.unpack_label(rec), item["label"])
        w.write_idx(item["key"], bytes.fromhex(item["packed_hex"]))
    w.close()
    assert (tmp_path / "p.rec").read_bytes() == (mxnet191 / "packed.rec").read_bytes()
    assert (tmp_path / "p.idx").read_bytes() == (mxnet191 / "packed.idx").read_bytes()


def pack_like_mxnet(item, label):
    # the generator passed flag 9 for the big-id scalar: MXNet forces flag 0 for a scalar label
    return recordio.pack((9, label, item["id"], item["id2"]), bytes.fromhex(item["payload_hex"]))


def test_oversize_record_is_a_clear_error():
    with pytest.raises(recordio.RecordIOError, match="2\\*\\*29"):
        recordio.frame(b"\0" * (2**29))


def test_truncated_rec_reports_offset(mxnet191, tmp_path):
    data = (mxnet191 / "raw.rec").read_bytes()
    (tmp_path / "t.rec").write_bytes(data[:110])
    with pytest.raises(recordio.RecordIOError, match="offset 104"):
        list(recordio.RecordReader(str(tmp_path / "t.rec")))
    with pytest.raises(recordio.RecordIOError, match="past the end"):
        recordio.IndexedRecordReader(str(mxnet191 / "raw.idx"), str(tmp_path / "t.rec"))


def test_writer_leaves_nothing_under_final_name_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with recordio.IndexedRecordWriter(str(tmp_path / "a.idx"), str(tmp_path / "a.rec")) as w:
            w.write_idx(0, b"abc")
            raise RuntimeError("crash")
    assert os.listdir(tmp_path) == []


def test_reader_pickles_and_reopens_in_child_process(mxnet191):
    reader = recordio.IndexedRecordReader(str(mxnet191 / "raw.idx"), str(mxnet191 / "raw.rec"))
    reader.read(1)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._fd is None and clone.read(5) == reader.read(5)
    pid = os.fork()
    if pid == 0:  # the child must open its own handle, not share the parent's
        ok = reader.read(8) == _expected_raw(mxnet191)[8] and reader._pid == os.getpid()
        os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0


def test_a_negative_idx_offset_is_one_error_naming_its_line(mxnet191, tmp_path):
    """A hand-edited or corrupt .idx: os.pread would raise EINVAL (a traceback) and the pre-flight's
    header gather would wrap around to the end of the file."""
    lines = (mxnet191 / "raw.idx").read_text().splitlines()
    lines[2] = lines[2].split("\t")[0] + "\t-8"
    (tmp_path / "n.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(recordio.RecordIOError, match=r"n.idx:3: offset -8 is negative"):
        recordio.IndexedRecordReader(str(tmp_path / "n.idx"), str(mxnet191 / "raw.rec"))
