#!/usr/bin/env python3
"""Fit a linear classifier (logistic regression) on extracted features and score it.

    tools/extract_features.py --prefix P --split train --out feats/train
    tools/extract_features.py --prefix P --split val --out feats/val
    tools/train_linear.py feats/train --val feats/val --json

C is chosen from a small grid on a held-out part of the training features; prints rank-1/rank-5
and per-class and macro precision/recall/F1 on the validation features (class names from the
features' OUT.json), with a note when the chosen C is at the grid's edge. --json: the last line is
{"rank1": ..., "rank5": ..., ...} as tools/evaluate.py's (--json-file PATH: the same in a file).
"""
import click

from toolkit.cli import JsonCommand, emit_json, json_options
from toolkit.rules import rule
from toolkit.transfer.linear import GRID, fit_and_score, report, summary


def _grid(ctx, param, value):
    try:
        values = tuple(float(v) for v in value.split(","))
    except ValueError:
        values = ()
    if not values or min(values) <= 0:
        raise click.BadParameter(f"{value!r}: positive numbers separated by commas, e.g. 0.1,1,10")
    return values


@click.command(cls=JsonCommand, context_settings={"max_content_width": 100})
@click.argument("train")
@click.option("--val", required=True, help="Validation features (the --out stem of tools/extract_features.py).")
@click.option("--c-grid", callback=_grid, default=",".join(f"{c:g}" for c in GRID), show_default=True,
              help="Inverse regularisation strengths to try.")
@click.option("--holdout", type=click.FloatRange(0.05, 0.5), default=0.2, show_default=True,
              help="Part of the training features held out to choose C.")
@click.option("--seed", type=rule("seed").click_type(), default=0, show_default=True)
@json_options
def main(train, val, c_grid, holdout, seed, as_json, json_file):
    if json_file:
        from toolkit.engine.preflight import writable_file
        writable_file(json_file, "--json-file")
    result = fit_and_score(train, val, c_grid, holdout, seed)
    print(report(result))
    emit_json(summary(result), as_json, json_file)


if __name__ == "__main__":
    main()
