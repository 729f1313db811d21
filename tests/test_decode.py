"""Odd images (issue 14 item 6): both backends' decoders against OpenCV's cv2.imdecode(IMREAD_COLOR),
which MXNet's ImageRecordIter calls; undecodable records in evaluation and in training."""
import io
import logging

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from toolkit import recordio
from toolkit.data import build_loader
from toolkit.data.decode import decode, decode_crop, jpeg_orientation
from toolkit.errors import UserError

RNG = np.random.default_rng(0)
RGB = cv2.GaussianBlur(RNG.integers(0, 255, (30, 44, 3), dtype=np.uint8), (7, 7), 3)


def pil_bytes(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def oriented_jpeg(orientation):
    im = Image.fromarray(RGB)
    exif = im.getexif()
    exif[0x0112] = orientation
    return pil_bytes(im, "JPEG", quality=95, exif=exif.tobytes())


def opencv(payload):
    return torch.from_numpy(cv2.cvtColor(cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR),
                                         cv2.COLOR_BGR2RGB)).permute(2, 0, 1)


ODD = {
    "16-bit png": lambda: cv2.imencode(".png", RGB[:, :, ::-1].astype(np.uint16) * 257 + 100)[1].tobytes(),
    "gif": lambda: pil_bytes(Image.fromarray(RGB), "GIF"),
    # OpenCV (MXNet's ImageRecordIter) takes the first frame; torchvision gives every frame
    "animated gif": lambda: pil_bytes(Image.fromarray(RGB), "GIF", save_all=True,
                                      append_images=[Image.fromarray(255 - RGB)]),
    "bmp": lambda: pil_bytes(Image.fromarray(RGB), "BMP"),
    "grey png": lambda: pil_bytes(Image.fromarray(RGB).convert("L"), "PNG"),
    "palette png": lambda: pil_bytes(Image.fromarray(RGB).convert("P"), "PNG"),
    "rgba png": lambda: pil_bytes(Image.fromarray(RGB).convert("RGBA"), "PNG"),
    "grey jpeg": lambda: pil_bytes(Image.fromarray(RGB).convert("L"), "JPEG"),
    "cmyk jpeg": lambda: pil_bytes(Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=95),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_in_training_and_evaluation_as_opencv_does(orientation):
    payload = oriented_jpeg(orientation)
    assert jpeg_orientation(payload) == orientation
    ref = opencv(payload)
    assert ref.shape[1:] == ((44, 30) if orientation >= 5 else (30, 44))
    assert torch.equal(decode(payload), ref)  # evaluation
    seen = []
    for box in [(0, 0, *ref.shape[1:]), (3, 5, 17, 11)]:  # training: regions of the displayed image
        crop = decode_crop(payload, lambda h, w: seen.append((h, w)) or box)
        t, l, h, w = box
        assert torch.equal(crop, ref[:, t:t + h, l:l + w])
    assert seen == [tuple(ref.shape[1:])] * 2  # the crop is drawn once, on the displayed size


@pytest.mark.parametrize("kind", sorted(ODD))
def test_every_format_decodes_in_training_and_evaluation_as_opencv_does(kind):
    payload = ODD[kind]()
    ref = opencv(payload)
    full = decode(payload)
    crop = decode_crop(payload, lambda h, w: (2, 3, h - 4, w - 6))
    assert full.dtype == crop.dtype == torch.uint8 and full.shape == ref.shape == (3, 30, 44)
    tol = 1 if kind == "cmyk jpeg" else 0  # libjpeg-turbo's CMYK -> RGB rounds apart from OpenCV's
    assert (full.int() - ref.int()).abs().max() <= tol
    assert torch.equal(crop, full[:, 2:28, 3:41])


def test_ordinary_jpegs_have_no_orientation_and_take_the_region_path():
    from toolkit.data.decode import _roi_decoder
    jpg = cv2.imencode(".jpg", RGB)[1].tobytes()  # what im2rec writes: JFIF, no EXIF
    assert jpeg_orientation(jpg) == 1 and jpeg_orientation(b"\xff\xd8\xff") == 1
    assert _roi_decoder() is not None


def write(path, payloads):
    with recordio.IndexedRecordWriter(str(path) + ".idx", str(path) + ".rec") as w:
        for k, data in enumerate(payloads):
            w.write_idx(k, recordio.pack((0, float(k), k, 0), data))


WORKER_CASES = r"""
import sys, torch, torchvision.io as tvio
from toolkit import recordio
from toolkit.data import build_loader
from toolkit.errors import UserError
# a fresh process whose OpenCV never ran before the DataLoader forks (see the test's note)
d = sys.argv[1]
good = tvio.encode_jpeg(torch.zeros(3, 20, 20, dtype=torch.uint8)).numpy().tobytes()
for name, payloads in (("s_train", [b"broken"] * 200), ("s_val", [good, good, b"broken", good, b"junk", good])):
    with recordio.IndexedRecordWriter(f"{d}/{name}.idx", f"{d}/{name}.rec") as w:
        for k, data in enumerate(payloads):
            w.write_idx(k, recordio.pack((0, float(k), k, 0), data))
loader = build_loader(d, "train", train=True, batch_size=4, image_size=16, workers=1, backend="torch")
loader.set_epoch(0)
try:
    next(iter(loader))
except UserError as exc:
    print("train:", exc.message)
loader = build_loader(d, "val", train=False, batch_size=4, image_size=16, workers=1, backend="torch")
loader.set_epoch(0)
print("val:", sum([y.tolist() for _, y in loader], []), len(loader.undecodable_records()))
"""


def test_worker_processes_leave_undecodable_records_out_and_stop_a_split_that_never_decodes(tmp_path):
    """The same as the two tests below, through a DataLoader worker: the ring slot is packed from
    the front, and the worker's error reaches the training process as one line. In a subprocess: a
    worker forked after this process ran OpenCV's thread pool can hang in _worker_init's
    cv2.setNumThreads (seen on HEAD too; the worker set-up is being reworked separately)."""
    import subprocess
    import sys
    from tests.conftest import REPO
    proc = subprocess.run([sys.executable, "-c", WORKER_CASES, str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO, timeout=240)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 2, proc.stdout + proc.stderr
    assert lines[0].startswith("train: 16 records in a row do not decode, from ") and "--verify" in lines[0]
    assert "Traceback" not in lines[0]
    assert lines[1] == "val: [0, 1, 3, 5] 2"


def test_evaluation_leaves_an_undecodable_record_out_and_names_it(tmp_path, caplog):
    good = cv2.imencode(".jpg", RGB)[1].tobytes()
    write(tmp_path / "s_val", [good, good, b"\xff\xd8 broken", good, b"junk", good])
    loader = build_loader(str(tmp_path), "val", train=False, batch_size=4, image_size=16, workers=0,
                          backend="torch")
    with caplog.at_level(logging.WARNING):
        loader.set_epoch(0)
        labels = [y.tolist() for _, y in loader]
    assert sum(labels, []) == [0, 1, 3, 5]  # nothing counted twice, nothing put in their place
    assert [s.split(" offset")[0] for s in loader.undecodable_records()] == \
        [f"{tmp_path}/s_val.rec key 2", f"{tmp_path}/s_val.rec key 4"]
    assert "not counted in this evaluation" in caplog.text


def test_training_on_a_split_that_does_not_decode_stops_with_one_line(tmp_path):
    write(tmp_path / "s_train", [b"\xff\xd8 broken"] * 200)
    loader = build_loader(str(tmp_path), "train", train=True, batch_size=4, image_size=16, workers=0,
                          backend="torch")
    loader.set_epoch(0)
    with pytest.raises(UserError) as err:
        next(iter(loader))
    assert "\n" not in err.value.message and "records in a row do not decode" in err.value.message
    assert "tools/im2rec.py --verify" in err.value.message


def test_an_empty_payload_says_so():
    with pytest.raises(ValueError, match="empty file"):
        decode(b"")
