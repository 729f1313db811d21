#!/usr/bin/env python3
"""Build the toy dataset: drawn shapes in class folders, listed and packed into .rec/.idx.

    tools/make_toy.py --out data/toy                 # images, lists, records (as train.py does)
    tools/make_toy.py --out /tmp/shapes --images-only  # just the class folders of JPEGs
    tools/make_toy.py --variant symbols --out data/toy2 --images-per-class 60   # ten other classes
"""
import click

from toolkit import toy


@click.command()
@click.option("--out", default="data/toy", show_default=True, help="Dataset folder.")
@click.option("--images-per-class", type=click.IntRange(min=2), default=250, show_default=True)
@click.option("--variant", type=click.Choice(toy.VARIANTS), default="shapes", show_default=True,
              help="shapes: the default set; symbols: ten other classes in random colours.")
@click.option("--classes", type=click.IntRange(2, len(toy.CLASSES)), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--images-only", is_flag=True, help="Write the JPEG folders only (no lists, no records).")
def main(out, variant, images_per_class, classes, seed, images_only):
    if images_only:
        toy.make_toy_images(out, images_per_class, classes, seed, variant)
    else:
        toy.ensure_toy_dataset(out, images_per_class, classes, seed, variant=variant)
    print(f"toy dataset in {out}")


if __name__ == "__main__":
    main()
