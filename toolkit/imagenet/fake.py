"""A small fake ILSVRC-2012 in the real downloads' structure, for the tests and the benchmark: the
train tar of per-synset tars, the val tar, the devkit .tar.gz (meta.mat written with scipy in the
devkit's field layout, IDs not in sorted-wnid order, internal nodes after the leaves; the ground
truth), the same images unpacked, and Kaggle's layout. Among the train images: a CMYK JPEG, a PNG
named .JPEG and a grayscale JPEG (ImageNet's odd files)."""
import io
import os
import random
import tarfile
from typing import Dict

import cv2
import numpy as np


def _jpeg(rng: random.Random, w: int, h: int, quality: int = 90) -> bytes:
    base = np.array([rng.randrange(256) for _ in range(3)], np.uint8)
    img = np.clip(base + np.random.default_rng(rng.randrange(2**32)).integers(-40, 40, (h, w, 3)), 0, 255)
    return cv2.imencode(".jpg", img.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def odd_files(rng: random.Random) -> Dict[str, bytes]:
    """kind -> bytes: a CMYK JPEG (PIL writes Adobe CMYK), a PNG, a grayscale JPEG."""
    from PIL import Image
    out = {}
    img = Image.new("CMYK", (40, 30), tuple(rng.randrange(256) for _ in range(4)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    out["cmyk"] = buf.getvalue()
    out["png"] = cv2.imencode(".png", np.full((30, 44, 3), rng.randrange(256), np.uint8))[1].tobytes()
    out["grayscale"] = cv2.imencode(".jpg", np.full((36, 28), rng.randrange(256), np.uint8))[1].tobytes()
    return out


def _tar_bytes(files: Dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_330_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _write(path: str, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _meta_mat(id_wnids, words, internal: int) -> bytes:
    import scipy.io
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    n = len(id_wnids) + internal
    synsets = np.zeros((n, 1), dtype=[(f, "O") for f in fields])
    for k in range(n):
        leaf = k < len(id_wnids)
        wnid = id_wnids[k] if leaf else f"n{90000000 + k:08d}"
        synsets[k, 0] = (np.array([[k + 1]], np.uint16), np.array([wnid]), np.array([words.get(wnid, "node")]),
                         np.array(["a gloss"]), np.array([[0 if leaf else 2]], np.uint8),
                         np.zeros((1, 0)) if leaf else np.array([[1, 2]], np.uint8),
                         np.array([[0]], np.uint8), np.array([[1300 if leaf else 0]], np.uint16))
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": synsets})
    return buf.getvalue()


def write_devkit(path: str, id_wnids, words, val_wnids, internal: int = 2):
    """ILSVRC2012_devkit_t12.tar.gz: data/meta.mat (IDs in the order of id_wnids, then internal
    nodes) and data/ILSVRC2012_validation_ground_truth.txt (the ID of each validation image)."""
    gt = "".join(f"{id_wnids.index(w) + 1}\n" for w in val_wnids)
    kit = {"ILSVRC2012_devkit_t12/data/meta.mat": _meta_mat(id_wnids, words, internal),
           "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": gt.encode(),
           "ILSVRC2012_devkit_t12/readme.txt": b"devkit\n"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in kit.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _write(path, buf.getvalue())


def make_fake_imagenet(root: str, classes: int = 4, per_class: int = 5, val: int = 12, size=(40, 32),
                       odd: bool = True, broken: bool = False, seed: int = 0) -> Dict[str, str]:
    """Write the fake set under root; returns the paths (train_tar, val_tar, devkit, train, val, kaggle)
    and `wnids` (the classes in the devkit's ID order, comma-separated)."""
    rng = random.Random(seed)
    wnids = [f"n{rng.randrange(1_000_000, 99_999_999):08d}" for _ in range(classes)]
    words = {w: f"thing {k}, object {k}" for k, w in enumerate(wnids)}
    train = {w: {f"{w}_{100 + i}.JPEG": _jpeg(rng, size[0] + i, size[1]) for i in range(per_class)}
             for w in wnids}
    if odd:  # the odd files in the first class, as in ImageNet's train set
        for kind, data in odd_files(rng).items():
            train[wnids[0]][f"{wnids[0]}_{kind}.JPEG"] = data
    if broken:  # a file no decoder reads
        train[wnids[-1]][f"{wnids[-1]}_broken.JPEG"] = b"\xff\xd8\xff\xe0 not really a JPEG"
    val_wnids = [wnids[(k * 7 + 3) % classes] for k in range(val)]
    val_files = {f"ILSVRC2012_val_{k + 1:08d}.JPEG": _jpeg(rng, size[0], size[1] + k) for k in range(val)}
    id_wnids = list(reversed(wnids)) if wnids == sorted(wnids) else list(wnids)  # never sorted
    rng.shuffle(id_wnids)
    while classes > 2 and id_wnids == sorted(id_wnids):
        rng.shuffle(id_wnids)
    p = {k: os.path.join(root, v) for k, v in dict(
        train_tar="ILSVRC2012_img_train.tar", val_tar="ILSVRC2012_img_val.tar", devkit="ILSVRC2012_devkit_t12.tar.gz",
        train="train", val="val", kaggle="kaggle").items()}
    # the outer tar in sorted order, the images inside each synset's tar not: the tool sorts
    _write(p["train_tar"], _tar_bytes({f"{w}.tar": _tar_bytes(dict(reversed(train[w].items()))) for w in sorted(wnids)}))
    _write(p["val_tar"], _tar_bytes(dict(reversed(val_files.items()))))
    write_devkit(p["devkit"], id_wnids, words, val_wnids)
    cls_loc = os.path.join(p["kaggle"], "ILSVRC", "Data", "CLS-LOC")
    for base in (p["train"], os.path.join(cls_loc, "train")):
        for w, files in train.items():
            for name, data in files.items():
                _write(os.path.join(base, w, name), data)
    for base in (p["val"], os.path.join(cls_loc, "val")):
        for name, data in val_files.items():
            _write(os.path.join(base, name), data)
    rows = [f"{name[:-5]},{w} 1 2 30 20 {w} 3 4 20 10 \n" for name, w in zip(val_files, val_wnids)]
    rng.shuffle(rows)  # Kaggle's rows are in no particular order
    _write(os.path.join(p["kaggle"], "LOC_val_solution.csv"), ("ImageId,PredictionString\n" + "".join(rows)).encode())
    _write(os.path.join(p["kaggle"], "LOC_synset_mapping.txt"),
           "".join(f"{w} {words[w]}\n" for w in sorted(wnids)).encode())
    p["wnids"] = ",".join(id_wnids)
    return p
