"""The images to look at: files, folders (recursive; a folder named like a class labels its images),
.lst lists, or records of a split, read when used (a whole split is never held in memory) and put
through the run's eval transform (the eval loader's own), so the network sees them exactly as in
evaluation; an image file that does not decode is left out with a line on stderr (as
tools/predict.py does), before the model runs.

The toy set's boxes (toolkit/toy.py, `IMAGES.boxes.tsv` beside the image folder) are attached where
known: for records through the split's .lst beside the records (record id -> path), for files by
their path relative to the image folder of the boxes file.
"""
import csv
import dataclasses
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision.transforms.v2 as T

from toolkit import recordio
from toolkit.data import open_split
from toolkit.data.discovery import RecordSet, split_files
from toolkit.data.decode import decode
from toolkit.data.transforms import eval_resize_for
from toolkit.errors import UserError
from toolkit.lists import IMAGE_EXTS, image_files, read_list
from toolkit.toy import boxes_path


@dataclasses.dataclass
class Sample:
    """One image; its bytes are read when used (a whole split's images are never held at once)."""
    name: str                       # a path, or FILE.rec#KEY for a record (as tools/predict.py names it)
    label: Optional[int] = None     # None: unknown
    box: Optional[Tuple[int, ...]] = None   # toy: x0, y0, x1, y1, width, height
    record: Optional[int] = None    # index in the split, for records
    records: Optional[RecordSet] = None

    @property
    def payload(self) -> bytes:
        """The encoded image."""
        if self.records is not None:
            return recordio.unpack(self.records.read(self.record))[1]
        return _read(self.name)


def read_boxes(path: str) -> Dict[str, Tuple[int, ...]]:
    """A boxes file -> {relative path: (x0, y0, x1, y1, width, height)}."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    try:
        return {r["path"]: tuple(int(r[k]) for k in ("x0", "y0", "x1", "y1", "width", "height")) for r in rows}
    except (KeyError, ValueError, TypeError):
        raise UserError(f"{path}: expected columns path, x0, y0, x1, y1, width, height "
                        "(as toolkit/toy.py writes them)") from None


def _boxes_near(folder: str, up: int = 2) -> Tuple[str, Dict]:
    """(root the box paths are relative to, boxes) from the boxes file of `folder`, of its
    `images/`, or of a folder up to `up` levels above (a class folder of the toy set)."""
    folder = os.path.abspath(folder)
    for _ in range(up + 1):
        for root in (folder, os.path.join(folder, "images")):
            if os.path.isfile(boxes_path(root)):
                return root, read_boxes(boxes_path(root))
        folder = os.path.dirname(folder)
    return folder, {}


def _box(boxes_at: Tuple[str, Dict], path: str):
    root, boxes = boxes_at
    return boxes.get(os.path.relpath(os.path.abspath(path), root).replace(os.sep, "/"))


def _label_of_folder(path: str, class_names: Sequence[str]) -> Optional[int]:
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return list(class_names).index(folder) if folder in class_names else None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read the image ({e.strerror or e})") from None


def _from_list(lst: str, image_root: Optional[str]) -> List[Sample]:
    root = image_root or os.path.dirname(os.path.abspath(lst))
    items = list(read_list(lst))
    if items and image_root is None and not os.path.exists(os.path.join(root, items[0].path)):
        if os.path.exists(os.path.join(root, "images", items[0].path)):  # the toy layout
            root = os.path.join(root, "images")
    boxes = _boxes_near(root, up=0)
    out = []
    for it in items:
        path = os.path.join(root, it.path)
        if not os.path.exists(path):
            raise UserError(f"{lst}: image {path} not found; give the folder the list's paths are "
                            "relative to with --image-root")
        out.append(Sample(path, int(it.labels[0]) if it.labels else None, _box(boxes, path)))
    return out


def _from_paths(inputs: Sequence[str], class_names, image_root) -> List[Sample]:
    out = []
    for p in inputs:
        if p.endswith(".lst"):
            out += _from_list(p, image_root)
        elif os.path.isdir(p):
            files = image_files(p)  # as tools/predict.py reads a folder
            if not files:
                raise UserError(f"{p}: no images ({', '.join(IMAGE_EXTS)}) in this folder or below")
            boxes = _boxes_near(p)
            out += [Sample(f, _label_of_folder(f, class_names), _box(boxes, f)) for f in files]
        elif os.path.isfile(p):
            out.append(Sample(p, _label_of_folder(p, class_names), _box(_boxes_near(os.path.dirname(p)), p)))
        else:
            raise UserError(f"{p}: no such image, folder or .lst file")
    return out


def spread(n: int, count: Optional[int]) -> np.ndarray:
    """`count` indices spread evenly over 0..n-1 (all of them when count is None or >= n)."""
    if count is None or count >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))


def _split_boxes(data: str, split: str) -> Dict[int, Tuple[int, ...]]:
    """{record id: box} through the split's .lst (same name as its .rec) and the toy boxes file."""
    out = {}
    _, boxes = _boxes_near(data, up=0)
    for rec, _ in split_files(data, split):
        lst = os.path.splitext(rec)[0] + ".lst"
        if boxes and os.path.isfile(lst):
            out.update({it.index: boxes[it.path] for it in read_list(lst) if it.path in boxes})
    return out


def _from_split(data: str, split: str, count: Optional[int]) -> List[Sample]:
    records = open_split(data, split)
    boxes = _split_boxes(data, split)
    out = []
    for i in spread(len(records), count):
        header, _ = recordio.unpack(records.read(int(i)))
        label = header.label if header.flag == 0 else header.label[0]
        out.append(Sample(records.name(int(i)), int(label), boxes.get(header.id), int(i), records))
    return out


def gather(inputs: Sequence[str], data: str, split: str, count: Optional[int], class_names,
           image_root: Optional[str] = None) -> List[Sample]:
    """The samples named by `inputs` (files, folders, .lst), else `count` records of `split`; read."""
    if inputs:
        samples = _from_paths(inputs, class_names, image_root)
        samples = decodable([samples[i] for i in spread(len(samples), count)])
    else:
        samples = _from_split(data, split, count)
    if not samples:
        raise UserError("no images to show")
    return samples


def decodable(samples: Sequence[Sample]) -> List[Sample]:
    """The image files that decode; each other one is a line on stderr and is left out, as
    tools/predict.py leaves out a file it cannot decode (records: the packer checked them). None
    decoding is one UserError naming the first."""
    keep, skipped = [], []
    for s in samples:
        try:
            _decoded(s, decode)
            keep.append(s)
        except UserError as e:
            skipped.append(str(e.message))
    if skipped and not keep:
        more = f" (and {len(skipped) - 1} more that do not decode)" if len(skipped) > 1 else ""
        raise UserError(f"no image to show: {skipped[0]}{more}")
    for line in skipped:
        print(f"skipped: {line}", file=sys.stderr)
    return keep


def _decoded(sample: Sample, fn):
    try:
        return fn(sample.payload)
    except Exception as e:  # torchvision raises RuntimeError with the codec's message
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{sample.name}: cannot decode the image ({why})") from None


def decode_all(samples: Sequence[Sample]) -> List[torch.Tensor]:
    """uint8 CHW RGB of each sample; one that does not decode is a one-line error."""
    return [_decoded(s, decode) for s in samples]


def predict(run, samples: Sequence[Sample], batch_size: int = 64) -> torch.Tensor:
    """Softmax probabilities (N, classes) on the CPU, read, decoded and run batch by batch."""
    return torch.cat([run.predict(eval_views(run, samples[i:i + batch_size]), batch_size)
                      for i in range(0, len(samples), batch_size)])


def eval_views(run, samples: Sequence[Sample]) -> torch.Tensor:
    """uint8 N x 3 x S x S: each image as the network sees it in evaluation (before mean/std); one
    that does not decode is a one-line error."""
    transform = run.eval_transform()
    return torch.stack([_decoded(s, lambda payload: transform(payload, 0)) for s in samples])


def box_masks(run, samples: Sequence[Sample]) -> Optional[torch.Tensor]:
    """bool N x S x S: each toy box through the same resize and centre crop as its image; None when
    a sample has no box. Boxes are scaled first when the records were packed at another size."""
    if any(s.box is None for s in samples):
        return None
    size = run.image_size
    geometry = T.Compose([T.Resize(eval_resize_for(size, run.cfg.eval_resize),
                                   interpolation=T.InterpolationMode.NEAREST), T.CenterCrop(size)])
    masks = []
    for s, img in zip(samples, decode_all(samples)):
        x0, y0, x1, y1, w, h = s.box
        height, width = img.shape[-2:]
        sx, sy = width / w, height / h
        m = torch.zeros(1, height, width, dtype=torch.uint8)
        m[:, int(y0 * sy):int(np.ceil(y1 * sy)), int(x0 * sx):int(np.ceil(x1 * sx))] = 1
        masks.append(geometry(m)[0].bool())
    return torch.stack(masks)
