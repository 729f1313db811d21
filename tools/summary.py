#!/usr/bin/env python3
"""Print a recipe's layer table, parameters and multiply-accumulates.

    tools/summary.py --recipe resnet50
    tools/summary.py --recipe resnet18 --image-size 64 --width 0.25 --num-classes 10 --json
"""
import json

import click

from toolkit.cli import model_kwargs, model_options
from toolkit.registry import build_model, get_recipe
from toolkit.summary import format_table, summarize


@click.command()
@click.option("--recipe", required=True, help="Recipe name (the README lists them).")
@model_options
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object.")
def main(recipe, as_json, **params):
    kw = model_kwargs(params)
    image_size = kw.get("image_size") or get_recipe(recipe).defaults.image_size
    s = summarize(build_model(recipe, **kw), image_size)
    print(format_table(s))
    if as_json:
        print(json.dumps({"recipe": recipe, "image_size": image_size, "params": s["params"],
                          "macs": s["macs"], "options": kw}))


if __name__ == "__main__":
    main()
