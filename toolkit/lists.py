""".lst image lists exactly as MXNet 1.x's tools/im2rec.py writes them (formats.md §4).

`make_lists` reproduces MXNet's list mode (walk order, labels, `random.seed(100)` shuffle, ratios,
chunk names) so the same folder gives the same files; `read_list` also reads integer labels and
any-whitespace lines (the C++ im2rec style). Beyond MXNet: `classes.tsv` beside the lists (the
dataset's one class map: a later list into the folder numbers its classes by it, where MXNet would
number a val folder with fewer classes anew), labels from Kaggle-style file names (`cat.123.jpg`) and
ImageNet devkit validation ground truth.
"""
import os
import re
import random
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from toolkit.atomic import atomic_open
from toolkit.errors import UserError

DEFAULT_EXTS = (".jpeg", ".jpg", ".png")  # MXNet im2rec's --exts default (lists and packing)
# what the tools that read image files (predict, visualize) take from a folder
IMAGE_EXTS = DEFAULT_EXTS + (".webp", ".gif", ".bmp", ".tif", ".tiff")


class ListItem(NamedTuple):
    index: int
    path: str
    labels: Tuple[float, ...]


def walk_images(root: str, recursive: bool, exts: Sequence[str] = DEFAULT_EXTS):
    """MXNet's list_image: (items, {folder: label}); folders get labels the first time they yield."""
    exts = tuple(e.lower() for e in exts)
    items: List[ListItem] = []
    cats: Dict[str, int] = {}
    if recursive:
        for path, dirs, files in os.walk(root, followlinks=True):
            dirs.sort()
            files.sort()
            for fname in files:
                fpath = os.path.join(path, fname)
                if os.path.splitext(fname)[1].lower() in exts and os.path.isfile(fpath):
                    cats.setdefault(path, len(cats))
                    items.append(ListItem(len(items), os.path.relpath(fpath, root), (float(cats[path]),)))
    else:
        for fname in sorted(os.listdir(root)):
            fpath = os.path.join(root, fname)
            if os.path.splitext(fname)[1].lower() in exts and os.path.isfile(fpath):
                items.append(ListItem(len(items), os.path.relpath(fpath, root), (0.0,)))
    return items, {os.path.relpath(k, root): v for k, v in cats.items()}


def image_files(folder: str) -> List[str]:
    """The image files (IMAGE_EXTS, any case) in `folder` and below, in sorted walk order."""
    found = []
    for path, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        found += [os.path.join(path, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTS)]
    return found


def format_line(item: ListItem) -> str:
    return "%d\t" % item.index + "".join("%f\t" % v for v in item.labels) + "%s\n" % item.path


def write_list(path: str, items: Sequence[ListItem]):
    with atomic_open(path) as f:
        f.writelines(format_line(it) for it in items)


def split_names(prefix: str, chunks: int, train_ratio: float, test_ratio: float):
    """[(path, slice-function)] of the lists MXNet writes, in its order."""
    out = []
    for i in range(chunks):
        base = prefix + ("_%d" % i if chunks > 1 else "")
        if train_ratio == 1.0:
            out.append((i, base + ".lst", "all"))
            continue
        if test_ratio:
            out.append((i, base + "_test.lst", "test"))
        if train_ratio + test_ratio < 1.0:
            out.append((i, base + "_val.lst", "val"))
        out.append((i, base + "_train.lst", "train"))
    return out


def make_lists(prefix: str, root: str, recursive: bool = False, exts: Sequence[str] = DEFAULT_EXTS,
               train_ratio: float = 1.0, test_ratio: float = 0.0, chunks: int = 1,
               shuffle: bool = True, label_from_name: bool = False) -> List[str]:
    """MXNet's make_list; returns the paths written. Also writes classes.tsv beside the lists: once,
    by a dataset's first list of class folders; a later list into the same folder numbers its classes
    by that file (a val folder with fewer classes keeps the train labels), and a class it lacks is an
    error."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: image folder not found")
    if not (0 < train_ratio <= 1 and 0 <= test_ratio < 1 and train_ratio + test_ratio <= 1):
        raise UserError(f"--train-ratio {train_ratio} / --test-ratio {test_ratio}: need "
                        "0 < train <= 1, 0 <= test < 1 and train + test <= 1")
    items, cats = walk_images(root, recursive, exts)
    if not items:
        raise UserError(f"{root}: no images with extensions {' '.join(exts)} "
                        f"({'' if recursive else 'add --recursive for class folders; '}see --exts)")
    if label_from_name:
        items, cats = _labels_from_names(items)
    classes_tsv = os.path.join(os.path.dirname(os.path.abspath(prefix)), "classes.tsv")
    known = os.path.exists(classes_tsv) and cats
    if known:  # the dataset's one class map, written by its first list: later lists number by it
        items = _relabel(items, cats, read_classes(classes_tsv), classes_tsv, root)
    if shuffle:
        random.seed(100)  # MXNet's fixed seed: same folder, same list files
        random.shuffle(items)
    size = (len(items) + chunks - 1) // chunks
    written = []
    for i, path, part in split_names(prefix, chunks, train_ratio, test_ratio):
        chunk = items[i * size:(i + 1) * size]
        sep, sep_test = int(size * train_ratio), int(size * test_ratio)
        sel = {"all": chunk, "test": chunk[:sep_test], "val": chunk[sep_test + sep:],
               "train": chunk[sep_test:sep_test + sep]}[part]
        write_list(path, sel)
        written.append(path)
    if cats and not known:
        write_classes(classes_tsv, cats)
    return written


def _relabel(items: List[ListItem], cats: Dict[str, int], names: List[str], classes_tsv: str, root: str):
    """Items labelled by the dataset's class map (`names`, from classes.tsv) instead of their walk
    order; a class the map lacks is one UserError, before any list is written."""
    number = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(cats) - set(number))
    if unknown:
        raise UserError(f"{os.path.join(root, unknown[0])}: class {unknown[0]!r} is not in {classes_tsv}, the "
                        f"dataset's class map ({len(names)} classes, from its first list; "
                        f"{len(unknown)} unknown class(es)); list these images into another dataset folder, "
                        f"or delete {classes_tsv} and list every split again")
    label = {cats[name]: float(number[name]) for name in cats}
    return [it._replace(labels=(label[int(it.labels[0])],)) for it in items]


def _labels_from_names(items: List[ListItem]):
    """Kaggle-style sets (`cat.123.jpg`, `dog.7.jpg`): the label is the name before the first dot."""
    names = sorted({os.path.basename(it.path).split(".")[0] for it in items})
    cats = {n: i for i, n in enumerate(names)}
    relabelled = [it._replace(labels=(float(cats[os.path.basename(it.path).split(".")[0]]),))
                  for it in items]
    return relabelled, cats


def write_classes(path: str, cats: Dict[str, int], words: Optional[Dict[str, str]] = None):
    """classes.tsv: `label<TAB>folder[<TAB>synset words]`, one line per class in label order."""
    with atomic_open(path) as f:
        for name, label in sorted(cats.items(), key=lambda kv: kv[1]):
            extra = f"\t{words[name]}" if words and name in words else ""
            f.write(f"{label}\t{name}{extra}\n")


def read_classes(path: str) -> List[str]:
    names = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if not line.strip():
                continue
            if len(fields) < 2 or not fields[0].isdigit() or int(fields[0]) != len(names):
                raise UserError(f"{path}:{lineno}: expected '{len(names)}<TAB>name', got {line.strip()!r}")
            names.append(fields[1])
    return names


def read_class_words(path: str) -> Optional[List[str]]:
    """The words column of classes.tsv (the wnid where a line has none), or None without any."""
    rows = [line.rstrip("\n").split("\t") for line in open(path) if line.strip()]
    if not any(len(r) > 2 and r[2] for r in rows):
        return None
    return [r[2] if len(r) > 2 and r[2] else r[1] for r in rows]


def read_synset_words(path: str) -> Dict[str, str]:
    """ImageNet's synset_words.txt / LOC_synset_mapping.txt: `n01440764 tench, Tinca tinca`; or the
    devkit (its tarball or meta.mat)."""
    from toolkit.imagenet import devkit
    if devkit.is_devkit_file(path):
        return devkit.load_devkit(path).words
    out = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                wnid, _, words = line.strip().partition(" ")
                out[wnid] = words
    return out


def read_list(path: str) -> Iterator[ListItem]:
    """Yield the items of an .lst file; a malformed line stops with `file:line` and the reason."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: list file not found")
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) < 3:  # C++ im2rec style: any whitespace (paths without spaces)
                fields = line.split()
            if len(fields) < 3:
                raise UserError(f"{path}:{lineno}: expected 'index<TAB>label[<TAB>label...]<TAB>path', "
                                f"got {line.strip()!r}")
            try:
                index = int(fields[0])
                labels = tuple(float(v) for v in fields[1:-1])
            except ValueError:
                raise UserError(f"{path}:{lineno}: index must be an integer and labels numbers, "
                                f"got {line.strip()!r}") from None
            yield ListItem(index, fields[-1].strip(), labels)


def imagenet_val_items(val_dir: str, ground_truth: str, id_wnids: Optional[Sequence[str]] = None,
                       classes: Optional[Sequence[str]] = None) -> List[ListItem]:
    """ILSVRC-2012 validation: sorted `ILSVRC2012_val_%08d.JPEG` labelled from the devkit ground truth.

    The devkit's ILSVRC2012_validation_ground_truth.txt holds 1-based ILSVRC2012_IDs, whose order
    (meta.mat) is not the sorted-wnid order of the train folders. Give `id_wnids` (the wnid of each
    ID, line k = ID k) and `classes` (classes.tsv of the train list) to get the train labels; without
    them the label is ID - 1, the devkit's own order.
    """
    with open(ground_truth) as f:
        ids = [int(x) for x in f.read().split()]
    files = sorted(f for f in os.listdir(val_dir) if f.lower().endswith((".jpeg", ".jpg", ".png")))
    check_val_numbering(files, len(ids), val_dir, ground_truth)
    if id_wnids is not None and classes is not None:
        label_of = {name: i for i, name in enumerate(classes)}
        missing = sorted({id_wnids[k - 1] for k in ids} - set(label_of))
        if missing:
            raise UserError(f"{ground_truth}: synsets {missing[:3]} are not among the train classes")
        labels = [label_of[id_wnids[k - 1]] for k in ids]
    else:
        labels = [k - 1 for k in ids]
    return [ListItem(i, fname, (float(lab),)) for i, (fname, lab) in enumerate(zip(files, labels))]


def check_val_numbering(files: Sequence[str], n: int, val_dir: str, ground_truth: str = "the ground truth"):
    """Line k of the ground truth is ILSVRC2012_val_%08d k: the sorted names must be 1..n exactly."""
    if len(files) != n:
        raise UserError(f"{ground_truth}: {n} labels but {len(files)} images in {val_dir}")
    for k, name in enumerate(files, 1):
        number = re.match(r"ILSVRC2012_val_(\d{8})\.", name)
        if number and int(number.group(1)) != k:
            raise UserError(f"{os.path.join(val_dir, name)} is image {k} of {val_dir}: expected "
                            f"ILSVRC2012_val_{1:08d} to ILSVRC2012_val_{n:08d} and no other images")


def read_id_wnids(path: str) -> List[str]:
    """The wnid of each ILSVRC2012_ID (line k = ID k): `n01440764` per line (more fields ignored),
    or the devkit's meta.mat, or the devkit tarball. A text list in sorted-wnid order is refused:
    the devkit's ID order never is (the synset mapping or synset words given by mistake)."""
    from toolkit.imagenet import devkit
    if devkit.is_devkit_file(path):
        return devkit.load_devkit(path).id_wnids
    wnids, line_of = [], {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if not (len(fields[0]) == 9 and fields[0][0] == "n" and fields[0][1:].isdigit()):
                raise UserError(f"{path}:{lineno}: expected a wnid such as n01440764 first, got {line.strip()!r}")
            if fields[0] in line_of:  # a per-image list (one wnid per validation image), say
                raise UserError(f"{path}: {fields[0]} on lines {line_of[fields[0]]} and {lineno}: expected "
                                "one wnid per ILSVRC2012_ID (line k = ID k, from the devkit's data/meta.mat)")
            line_of[fields[0]] = lineno
            wnids.append(fields[0])
    if len(wnids) > 2 and wnids == sorted(wnids):
        raise UserError(f"{path}: its wnids are in sorted order, as in LOC_synset_mapping.txt or synset_words.txt, "
                        "never the devkit's ID order: give --imagenet-id-wnids the devkit "
                        "(ILSVRC2012_devkit_t12.tar.gz) or its data/meta.mat")
    return wnids


def imagenet_val_list(val_dir: str, ground_truth: str, id_wnids: Optional[str], classes_tsv: Optional[str]):
    """(items, what the labels follow) for --imagenet-val-gt: train labels, or a UserError. The
    devkit's IDs are not in the train list's sorted-wnid order, so the wnid of each ID is required;
    the label is the wnid's line in the train classes.tsv, or without one its place among the sorted
    wnids (the order in which the train list numbers the synset folders)."""
    if not id_wnids:
        raise UserError(f"--imagenet-val-gt {ground_truth}: the devkit's class IDs are not the train labels; "
                        "give --imagenet-id-wnids FILE (the wnid of each ILSVRC2012_ID, line k = ID k, "
                        "from the devkit's data/meta.mat)")
    wnids = read_id_wnids(id_wnids)
    try:
        with open(ground_truth) as f:
            ids = [int(x) for x in f.read().split()]
    except ValueError as exc:
        raise UserError(f"{ground_truth}: expected one ILSVRC2012_ID (an integer) per line ({exc})") from None
    if ids and not 1 <= min(ids) <= max(ids) <= len(wnids):
        raise UserError(f"{ground_truth}: IDs run {min(ids)}..{max(ids)} but {id_wnids} lists {len(wnids)} wnids")
    if classes_tsv:
        classes, order = read_classes(classes_tsv), classes_tsv
    else:  # IDs 1..1000 of meta.mat's 1860 are the leaves (the train folders); the rest, internal nodes
        top = max(ids, default=len(wnids))
        classes, order = sorted(wnids[:top]), f"the sorted wnids of IDs 1..{top} of {id_wnids}"
    return imagenet_val_items(val_dir, ground_truth, wnids, classes), order
