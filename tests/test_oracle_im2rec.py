"""Compatibility with the real MXNet 1.9.1 (the oracle, in .mxnet-venv): both directions."""
import json
import subprocess

import pytest
import torch
import torchvision.io as tvio

from toolkit import im2rec, lists, recordio, toy
from toolkit.benchmarks.oracle import mxnet_tool

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

READ_OURS = r"""
import json, sys, mxnet as mx, numpy as np
prefix, n_shards = sys.argv[1], int(sys.argv[2])
out = {"records": [], "iter_labels": []}
for k in range(n_shards):
    name = "%s-%05d" % (prefix, k)
    r = mx.recordio.MXIndexedRecordIO(name + ".idx", name + ".rec", "r")
    for key in r.keys:
        h, img = mx.recordio.unpack_img(r.read_idx(key))
        out["records"].append([int(key), float(h.label), int(h.id), list(img.shape),
                               img[..., ::-1].astype("float64").mean(axis=(0, 1)).tolist()])
    it = mx.io.ImageRecordIter(path_imgrec=name + ".rec", path_imgidx=name + ".idx",
                               data_shape=(3, 32, 32), batch_size=1, resize=32)
    for batch in it:
        out["iter_labels"].append(float(batch.label[0].asnumpy()[0]))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return toy.make_toy_images(str(tmp_path_factory.mktemp("oracle")), images_per_class=6, num_classes=4)


def _decode(payload):
    return tvio.decode_image(torch.frombuffer(bytearray(payload), dtype=torch.uint8),
                             mode=tvio.ImageReadMode.RGB)


def test_mxnet_reads_our_shards(mxnet_python, images, tmp_path):
    lists.make_lists(str(tmp_path / "d"), images, recursive=True)
    im2rec.pack_list(str(tmp_path / "d.lst"), images, im2rec.PackOptions(resize=48, num_shards=2))
    res = subprocess.run([mxnet_python, "-c", READ_OURS, str(tmp_path / "d"), "2"],
                         capture_output=True, text=True, check=True)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    expected = []
    for k in range(2):
        name = str(tmp_path / f"d-{k:05d}")
        reader = recordio.IndexedRecordReader(name + ".idx", name + ".rec")
        for key in reader.keys:
            header, payload = recordio.unpack(reader.read_idx(key))
            img = _decode(payload).double()
            expected.append((key, header.label, header.id, [img.shape[1], img.shape[2], 3],
                             img.mean((1, 2)).tolist()))
    assert len(got["records"]) == len(expected) == 24
    for g, e in zip(got["records"], expected):
        assert g[:4] == list(e[:4])
        assert max(abs(a - b) for a, b in zip(g[4], e[4])) < 1.5  # OpenCV vs libjpeg-turbo decode
    assert sorted(got["iter_labels"]) == sorted(e[1] for e in expected)


def test_we_read_mxnet_im2rec_output(mxnet_python, images, tmp_path):
    tool = mxnet_tool(mxnet_python, "im2rec.py")
    subprocess.run([mxnet_python, tool, "--list", "--recursive", str(tmp_path / "m"), images],
                   check=True, capture_output=True)
    subprocess.run([mxnet_python, tool, "--num-thread", "2", str(tmp_path / "m"), images],
                   check=True, capture_output=True)
    ours_list = {it.index: it for it in lists.read_list(str(tmp_path / "m.lst"))}
    reader = recordio.IndexedRecordReader(str(tmp_path / "m.idx"), str(tmp_path / "m.rec"))
    assert sorted(reader.keys) == sorted(ours_list)
    for key in reader.keys:
        header, payload = recordio.unpack(reader.read_idx(key))
        item = ours_list[key]
        assert header.label == item.labels[0] and header.id == key
        original = tvio.decode_image(f"{images}/{item.path}", mode=tvio.ImageReadMode.RGB).float()
        # MXNet re-encoded at quality 95 through OpenCV: close to the original pixels
        assert (_decode(payload).float() - original).abs().mean() < 3.0
