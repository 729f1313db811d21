"""The built-in toy dataset: procedurally drawn shapes in class folders, deterministic for a seed.

Ten classes, each a shape with its own colour family, drawn at a random position, scale and
rotation on a textured background with clutter, at sizes from 64 to 160 pixels. A small CNN learns
it to high accuracy in a few CPU minutes; it is the default dataset of the quickstart and the tests.
Each shape's bounding box goes into `IMAGES.boxes.tsv` beside the image folder IMAGES (path as in
the .lst lists, x0, y0, x1, y1 with x1/y1 exclusive, image width and height; outside the folder, so
that the folder holds only images), so tools/visualize.py's heatmaps can be checked against where
the shape really is.

Variant "symbols" (`tools/make_toy.py --variant symbols`): ten other classes (pentagon, octagon,
arrow, half-disc, dots, waves, grid, zigzag, bullseye, frame) on the same backgrounds, each in a
colour family of its own (other hues than the shapes'): a second set to fine-tune on, or to fit a
linear classifier on features learnt from the first. The default variant's images are unchanged.
"""
import csv
import math
import os
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from toolkit.atomic import atomic_open
from toolkit.im2rec import PackOptions, pack_list
from toolkit.lists import make_lists

VARIANTS = ("shapes", "symbols")
SYMBOL_COLOURS = [(200, 120, 120), (120, 200, 120), (120, 120, 200), (200, 200, 110), (200, 110, 200),
                  (110, 200, 200), (250, 170, 60), (90, 60, 170), (170, 230, 60), (60, 110, 60)]
SYMBOLS = ["pentagon", "octagon", "arrow", "halfdisc", "dots", "waves", "grid", "zigzag", "bullseye", "frame"]
CLASSES = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon",
           "stripes", "checker"]
# base RGB per class; each image jitters it
COLOURS = [(220, 40, 40), (40, 170, 60), (50, 80, 220), (230, 200, 30), (150, 50, 200),
           (240, 130, 20), (30, 200, 210), (230, 60, 170), (245, 245, 245), (130, 80, 40)]


def _polygon(cx, cy, r, n, rot, star=False) -> List[Tuple[float, float]]:
    m = 2 * n if star else n  # a star alternates outer and inner points
    return [(cx + rad * math.cos(rot + 2 * math.pi * k / m), cy + rad * math.sin(rot + 2 * math.pi * k / m))
            for k, rad in ((k, r if not star or k % 2 == 0 else r * 0.45) for k in range(m))]


def _draw_shape(d: ImageDraw.ImageDraw, cls: int, cx, cy, r, rot, fill):
    name = CLASSES[cls]
    if name == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif name == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r / 3)))
    elif name in ("square", "triangle", "diamond", "hexagon"):
        n = {"square": 4, "triangle": 3, "diamond": 4, "hexagon": 6}[name]
        extra = math.pi / 4 if name == "diamond" else 0
        pts = _polygon(cx, cy, r, n, rot + extra)
        if name == "diamond":  # elongated: distinct from a rotated square
            pts = [(cx + (x - cx) * 0.6, y) for x, y in pts]
        d.polygon(pts, fill=fill)
    elif name == "star":
        d.polygon(_polygon(cx, cy, r, 5, rot, star=True), fill=fill)
    elif name == "cross":
        w = r / 3
        for a in (rot, rot + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy * w, dx * w
            d.polygon([(cx - dx * r + px, cy - dy * r + py), (cx + dx * r + px, cy + dy * r + py),
                       (cx + dx * r - px, cy + dy * r - py), (cx - dx * r - px, cy - dy * r - py)],
                      fill=fill)
    elif name == "stripes":
        step = max(3, int(r / 3))
        for k in range(-3, 4):
            o = k * step
            d.line([(cx - r, cy + o - r / 3), (cx + r, cy + o + r / 3)], fill=fill, width=max(2, step // 2))
    elif name == "checker":
        s = max(3, int(r / 2))
        for i in range(-2, 2):
            for j in range(-2, 2):
                if (i + j) % 2 == 0:
                    d.rectangle([cx + i * s, cy + j * s, cx + (i + 1) * s, cy + (j + 1) * s], fill=fill)


def _draw_symbol(d: ImageDraw.ImageDraw, cls: int, cx, cy, r, rot, fill):
    name, w = SYMBOLS[cls], max(2, int(r / 5))
    along = lambda t, o=0.0: (cx + t * math.cos(rot) - o * math.sin(rot),  # noqa: E731
                              cy + t * math.sin(rot) + o * math.cos(rot))
    if name in ("pentagon", "octagon"):
        d.polygon(_polygon(cx, cy, r, 5 if name == "pentagon" else 8, rot), fill=fill)
    elif name == "arrow":
        d.polygon([along(*p) for p in ((-r, -r / 5), (0, -r / 5), (0, -r / 2), (r, 0), (0, r / 2),
                                       (0, r / 5), (-r, r / 5))], fill=fill)
    elif name == "halfdisc":
        start = math.degrees(rot)
        d.pieslice([cx - r, cy - r, cx + r, cy + r], start, start + 180, fill=fill)
    elif name == "dots":
        for i in (-1, 0, 1):
            for j in (-1, 0, 1):
                x, y = along(i * r * 0.6, j * r * 0.6)
                d.ellipse([x - r / 6, y - r / 6, x + r / 6, y + r / 6], fill=fill)
    elif name in ("waves", "zigzag"):
        for o in (-r / 2, 0, r / 2) if name == "waves" else (0,):
            pts = [along(t, o + r / 5 * (math.sin(t / r * 3 * math.pi) if name == "waves" else
                                         (1 if int((t + r) / (r / 3)) % 2 else -1) * 2))
                   for t in np.linspace(-r, r, 25 if name == "waves" else 7)]
            d.line(pts, fill=fill, width=w)
    elif name == "grid":
        for o in (-r / 3, r / 3):
            d.line([along(-r, o), along(r, o)], fill=fill, width=w)
            d.line([along(o, -r), along(o, r)], fill=fill, width=w)
    elif name == "bullseye":
        for k in (1.0, 0.6, 0.25):
            d.ellipse([cx - r * k, cy - r * k, cx + r * k, cy + r * k], outline=fill, width=max(2, int(r / 8)))
    elif name == "frame":
        d.polygon(_polygon(cx, cy, r, 4, rot), outline=fill, width=w)


BOX_COLUMNS = ["path", "x0", "y0", "x1", "y1", "width", "height"]


def boxes_path(image_root: str) -> str:
    """The boxes file of an image folder: IMAGES.boxes.tsv beside it."""
    return os.path.normpath(os.path.abspath(image_root)) + ".boxes.tsv"


def draw_image(rng: np.random.Generator, cls: int, variant: str = "shapes") -> Image.Image:
    """One image of class `cls`: textured background, clutter, then the class's shape."""
    return draw_image_with_box(rng, cls, variant)[0]


def draw_image_with_box(rng: np.random.Generator, cls: int, variant: str = "shapes"):
    """(image, (x0, y0, x1, y1)): the image of draw_image and the pixels its shape covers (the
    shape drawn again on a mask, so the random draws and the image are the same as without it)."""
    w, h = (int(v) for v in rng.integers(64, 161, size=2))
    bg = rng.integers(30, 140, size=3)
    noise = rng.normal(0, 18, size=(h, w, 3)) + bg
    img = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):  # clutter: thin lines and dots in dull colours
        c = tuple(int(v) for v in rng.integers(40, 160, size=3))
        x0, y0, x1, y1 = (float(v) for v in rng.random(4) * [w, h, w, h])
        if rng.random() < 0.5:
            d.line([(x0, y0), (x1, y1)], fill=c, width=int(rng.integers(1, 3)))
        else:
            d.ellipse([x0, y0, x0 + 4, y0 + 4], fill=c)
    r = float(rng.uniform(0.22, 0.4)) * min(w, h)
    cx = float(rng.uniform(r, w - r))
    cy = float(rng.uniform(r, h - r))
    mask = Image.new("L", (w, h))
    if variant == "symbols":
        fill = tuple(int(np.clip(v + rng.integers(-30, 31), 0, 255)) for v in SYMBOL_COLOURS[cls])
        rot = float(rng.uniform(0, 2 * math.pi))
        _draw_symbol(d, cls, cx, cy, r, rot, fill)
        _draw_symbol(ImageDraw.Draw(mask), cls, cx, cy, r, rot, 255)
        return img, mask.getbbox()
    fill = tuple(int(np.clip(v + rng.integers(-35, 36), 0, 255)) for v in COLOURS[cls])
    rot = float(rng.uniform(0, 2 * math.pi))
    _draw_shape(d, cls, cx, cy, r, rot, fill)
    _draw_shape(ImageDraw.Draw(mask), cls, cx, cy, r, rot, 255)
    return img, mask.getbbox()


def make_toy_images(root: str, images_per_class: int = 250, num_classes: int = 10, seed: int = 0,
                    variant: str = "shapes") -> str:
    """Write `images_per_class` JPEGs per class into root/<class>/; deterministic for `seed`."""
    names = SYMBOLS if variant == "symbols" else CLASSES
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}")
    if not 2 <= num_classes <= len(names):
        raise ValueError(f"num_classes must be 2..{len(names)}")
    rows = []
    for cls in range(num_classes):
        folder = os.path.join(root, names[cls])
        os.makedirs(folder, exist_ok=True)
        # per class (adding classes keeps the others); the symbols on streams of their own
        rng = np.random.default_rng([seed, cls] if variant == "shapes" else [seed, cls, 1])
        for i in range(images_per_class):
            name = f"{names[cls]}/{names[cls]}_{i:04d}.jpg"
            img, box = draw_image_with_box(rng, cls, variant)
            img.save(os.path.join(root, name), quality=90)
            rows.append([name, *box, *img.size])
    with atomic_open(boxes_path(root), "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(BOX_COLUMNS)
        writer.writerows(rows)
    return root


def toy_files(root: str) -> List[str]:
    names = [f"toy_{s}.{e}" for s in ("train", "val") for e in ("rec", "idx", "mean_std.json")]
    return [os.path.join(root, n) for n in names + ["classes.tsv"]]


def ensure_toy_dataset(root: str = "data/toy", images_per_class: int = 250, num_classes: int = 10,
                       seed: int = 0, num_thread: int = 0, quiet: bool = False, variant: str = "shapes") -> str:
    """Generate, list (80/20 train/val) and pack the toy dataset into `root`, unless already there."""
    if all(os.path.exists(p) for p in toy_files(root)):
        return root
    if not quiet:
        print(f"building the toy dataset in {root} ({variant}: {num_classes} classes x {images_per_class} "
              "images; done once)", flush=True)
    images = make_toy_images(os.path.join(root, "images"), images_per_class, num_classes, seed, variant)
    lists = make_lists(os.path.join(root, "toy"), images, recursive=True, train_ratio=0.8)
    opts = PackOptions(pass_through=True, num_thread=num_thread or (os.cpu_count() or 1))
    for lst in lists:
        pack_list(lst, images, opts)
    return root
