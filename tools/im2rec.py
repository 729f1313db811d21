#!/usr/bin/env python3
"""Make .lst lists and .rec/.idx record files from image folders, with MXNet's im2rec command line.

    tools/im2rec.py --list --recursive --train-ratio 0.9 data/imagenet/imagenet ~/ILSVRC2012/train
    tools/im2rec.py --resize 256 --quality 95 --num-thread 8 --num-shards 8 data/imagenet/imagenet ~/ILSVRC2012/train
    tools/im2rec.py --verify data/imagenet/imagenet

argparse rather than click: MXNet's `--exts .jpg .png` takes several values after one flag, which
click options cannot, and old commands must keep working.
"""
import argparse
import os
import sys

from toolkit import im2rec, lists, verify
from toolkit.errors import Stalled, UserError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("prefix", help="prefix of the .lst/.rec files (a folder: every list in it)")
    p.add_argument("root", nargs="?", help="folder holding the images")
    g = p.add_argument_group("list mode")
    g.add_argument("--list", action="store_true", help="write PREFIX*.lst from the folder ROOT")
    g.add_argument("--exts", nargs="+", default=list(lists.DEFAULT_EXTS))
    g.add_argument("--chunks", type=int, default=1)
    g.add_argument("--train-ratio", type=float, default=1.0)
    g.add_argument("--test-ratio", type=float, default=0.0)
    g.add_argument("--recursive", action="store_true", help="one label per sub-folder")
    g.add_argument("--no-shuffle", dest="shuffle", action="store_false")
    g.add_argument("--label-from-name", action="store_true",
                   help="Kaggle-style sets: the label is the file name before the first dot")
    g.add_argument("--synsets", help="ImageNet synset words (synset_words.txt, LOC_synset_mapping.txt, or the "
                                     "devkit / its meta.mat): adds the words to classes.tsv")
    g.add_argument("--imagenet-val-gt", metavar="GT",
                   help="ILSVRC2012_validation_ground_truth.txt: label ROOT's val images from it")
    g.add_argument("--imagenet-id-wnids", metavar="FILE",
                   help="the devkit (ILSVRC2012_devkit_t12.tar.gz), its data/meta.mat, or the wnid of each "
                        "ILSVRC2012_ID one per line (maps the devkit ids to train labels)")
    g.add_argument("--classes", metavar="TSV",
                   help="the train list's classes.tsv, for --imagenet-val-gt (default: classes.tsv beside "
                        "PREFIX, else the wnids in sorted order, as the train list numbers synset folders)")
    g = p.add_argument_group("pack mode")
    g.add_argument("--pass-through", action="store_true")
    g.add_argument("--resize", type=int, default=0)
    g.add_argument("--center-crop", action="store_true")
    g.add_argument("--quality", type=int, default=95,
                   help="JPEG quality 1-100, or PNG compression 0-9 (larger values mean 9, as in MXNet)")
    g.add_argument("--num-thread", type=int, default=1, help="worker processes (1: this process)")
    g.add_argument("--color", type=int, default=1, choices=[-1, 0, 1])
    g.add_argument("--encoding", default=".jpg", choices=[".jpg", ".png"])
    g.add_argument("--pack-label", action="store_true")
    g.add_argument("--num-shards", type=int, default=1, help="split each list into N shard files")
    g = p.add_argument_group("verify mode")
    g.add_argument("--verify", action="store_true", help="check every PREFIX*.rec")
    g.add_argument("--fix-index", action="store_true", help="rebuild a missing .idx from its .rec")
    return p.parse_args(argv)


def run_list(a):
    for flag, path in (("--imagenet-val-gt", a.imagenet_val_gt), ("--imagenet-id-wnids", a.imagenet_id_wnids),
                       ("--synsets", a.synsets), ("--classes", a.classes)):
        if path and not os.path.isfile(path):
            raise UserError(f"{flag} {path}: file not found")
    if not os.path.isdir(a.root):
        raise UserError(f"{a.root}: image folder not found")
    os.makedirs(os.path.dirname(os.path.abspath(a.prefix)), exist_ok=True)  # as a tool's output folder
    cls_file = os.path.join(os.path.dirname(os.path.abspath(a.prefix)), "classes.tsv")
    if a.imagenet_val_gt:
        items, order = lists.imagenet_val_list(a.root, a.imagenet_val_gt, a.imagenet_id_wnids,
                                               a.classes or (cls_file if os.path.exists(cls_file) else None))
        lists.write_list(a.prefix + ".lst", items)
        return print(f"wrote {a.prefix}.lst ({len(items)} images; labels in the order of {order})")
    if a.imagenet_id_wnids or a.classes:
        raise UserError("--imagenet-id-wnids and --classes label ImageNet's validation images: "
                        "give them with --imagenet-val-gt")
    if a.synsets and not (a.recursive or a.label_from_name):
        raise UserError("--synsets names the classes of class folders: add --recursive")
    words = lists.read_synset_words(a.synsets) if a.synsets else None
    written = lists.make_lists(a.prefix, a.root, a.recursive, a.exts, a.train_ratio, a.test_ratio,
                               a.chunks, a.shuffle, a.label_from_name)
    if words is not None:
        names = lists.read_classes(cls_file)
        lists.write_classes(cls_file, {n: i for i, n in enumerate(names)}, words)
    print("wrote " + " ".join(written))


def run_verify(a):
    bad = 0
    reports = verify.verify_prefix(a.prefix, a.fix_index)
    for r in reports:
        counts = " ".join(f"{int(k) if float(k).is_integer() else k}:{v}" for k, v in sorted(r.labels.items()))
        print(f"{r.rec}: {r.records} records, {r.bad_images} undecodable"
              f"{', .idx rebuilt' if r.rebuilt else ''}; per label {counts}")
        for problem in r.problems:
            print(f"  problem: {problem}")
        bad += not r.ok
    for split, t in verify.totals_per_split(reports).items():
        print(f"split {split}: {t.records} records in {t.files} file(s), {t.bad_images} undecodable, "
              f"{len(t.labels)} labels, {len(t.problems)} problems")
    if bad:
        raise UserError(f"{bad} record file(s) have problems (listed above)")


def run_pack(a):
    opts = im2rec.PackOptions(a.resize, a.center_crop, a.quality, a.encoding, a.pass_through,
                              a.pack_label, a.color, max(1, a.num_thread), max(1, a.num_shards))
    for r in im2rec.pack_prefix(a.prefix, a.root, opts):
        print(f"{r.list_path}: {r.records} records in {', '.join(r.outputs)}; {r.skipped} skipped")


def main(argv=None):
    a = parse_args(argv)
    try:
        if a.verify:
            return run_verify(a)
        if not a.root:
            raise UserError("ROOT (the image folder) is required for --list and for packing")
        return run_list(a) if a.list else run_pack(a)
    except (UserError, Stalled) as e:
        print(f"Error: {e.message}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        im2rec.interrupted_exit("\ninterrupted: files already complete are kept; the one being written "
                                "was removed")


if __name__ == "__main__":
    main()
