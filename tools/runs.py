#!/usr/bin/env python3
"""The journal: one row per run in LOGS/ and CKPT/ (ours and MXNet's logs), what it changed from its
recipe's defaults, how far it got, how it ended, and its best validation figures.

    tools/runs.py                                          # every run, as a table
    tools/runs.py --filter recipe=resnet18 --sort best_val_top1
    tools/runs.py 'sweep_*' --format markdown --plot logs/sweep.png   # chosen runs, their curves
    tools/runs.py --csv runs.csv
"""
import click
import pandas as pd

from toolkit.atomic import atomic_open
from toolkit.errors import UserError
from toolkit.journal import COLUMNS, display, journal, markdown, notes, select


def write_csv(df, path: str):
    try:
        with atomic_open(path, "w", newline="") as f:
            df[COLUMNS].to_csv(f, index=False)
    except OSError as e:
        raise UserError(f"{path}: cannot write the CSV: {e.strerror or e}") from None
    click.echo(f"CSV: {path}", err=True)


def plot(df, logs_dir: str, out: str):
    from toolkit.logparse import parse_logs
    from toolkit.plots import plot_validation
    curves = {}
    for prefix, log in zip(df["prefix"], df["log"]):
        if log:
            try:
                curves[prefix] = parse_logs([log]).epochs
            except UserError:
                pass
    if not curves:
        raise UserError(f"--plot {out}: none of the chosen runs has a log in {logs_dir}/")
    click.echo(f"PNG: {plot_validation(curves, out)}", err=True)


@click.command(context_settings={"max_content_width": 100})
@click.argument("patterns", nargs=-1, metavar="[PREFIX ...]")
@click.option("--logs-dir", default="logs", show_default=True)
@click.option("--checkpoints-dir", default="checkpoints", show_default=True)
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Keep runs whose column or training option matches (wildcards allowed), e.g. "
                   "recipe=resnet18, status=stopped, act=elu. Repeat to narrow.")
@click.option("--sort", metavar="COLUMN", help="Sort: best first for accuracies, F1 and images/s, "
                                               "ascending otherwise. Default: prefix.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "none"]), default="table",
              show_default=True)
@click.option("--csv", "csv_path", metavar="CSV", help="Write every column of the chosen runs here.")
@click.option("--plot", "png", metavar="PNG", help="Draw the validation curves of the chosen runs in one PNG.")
def main(patterns, logs_dir, checkpoints_dir, filters, sort, fmt, csv_path, png):
    """List the runs in LOGS-DIR and CHECKPOINTS-DIR (PREFIX: only those, wildcards allowed)."""
    df = journal(logs_dir, checkpoints_dir)
    if patterns:
        from fnmatch import fnmatchcase
        df = df[[any(fnmatchcase(p, pat) for pat in patterns) for p in df["prefix"]]]
    df = select(df, filters, sort)
    if csv_path:
        write_csv(df, csv_path)
    if png:
        plot(df, logs_dir, png)
    if fmt == "none":
        return
    if df.empty:
        click.echo(f"no runs found in {logs_dir}/ or {checkpoints_dir}/" + (" matching" if patterns or filters else ""))
        return
    table = display(df)
    if fmt == "markdown":
        click.echo(markdown(table))
    else:
        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 250,
                               "display.max_colwidth", 80):
            click.echo(table.to_string(index=False))
    for line in notes(df):
        click.echo(line)


if __name__ == "__main__":
    main()
