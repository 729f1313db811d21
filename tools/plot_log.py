#!/usr/bin/env python3
"""Plot and tabulate MXNet-format training logs (ours or MXNet's own, any era).

    tools/plot_log.py logs/resnet50.log                       # logs/resnet50.png + per-epoch table
    tools/plot_log.py run1.log run2.log --out run.png         # a resumed run in two files, in order
    tools/plot_log.py logs/alexnet.log --format markdown      # the table MXNet's parse_log.py prints
    tools/plot_log.py logs/alexnet.log --csv e.csv --batches  # e.csv and e-batches.csv
"""
import os

import click
import pandas as pd

from toolkit.atomic import atomic_open
from toolkit.errors import UserError
from toolkit.logparse import mxnet_markdown, parse_logs
from toolkit.plots import plot_run


def _write_csv(df: pd.DataFrame, path: str, index: bool):
    try:
        with atomic_open(path, "w", newline="") as f:
            df.to_csv(f, index=index)
    except OSError as e:
        raise UserError(f"{path}: cannot write the CSV: {e.strerror or e}") from None
    click.echo(f"CSV: {path}", err=True)


def _markdown(df: pd.DataFrame) -> str:
    rows = [" | ".join(str(v) for v in r) for r in df.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(df.columns) + " |", "| --- " * len(df.columns) + "|"]
                     + [f"| {r} |" for r in rows])


@click.command(context_settings={"max_content_width": 100})
@click.argument("logs", nargs=-1, required=True, metavar="LOG [LOG ...]")
@click.option("--out", metavar="PNG", help="Plot file (default: the first LOG with .png).")
@click.option("--csv", "csv_path", metavar="CSV", help="Write the per-epoch table here.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "none"]), default="table",
              show_default=True, help="markdown: exactly the table of MXNet's tools/parse_log.py.")
@click.option("--batches", is_flag=True, help="Also print (and with --csv, write) every Speedometer line.")
@click.option("--title", help="Plot title (default: the log file names).")
def main(logs, out, csv_path, fmt, batches, title):
    """Read LOG files (one run, in order: later lines win), plot accuracy and loss, print a table."""
    parsed = parse_logs(logs, batches=batches)
    png = plot_run(parsed, out or os.path.splitext(logs[0])[0] + ".png", title=title)
    click.echo(f"PNG: {png}", err=True)
    if csv_path:
        _write_csv(parsed.epochs, csv_path, index=True)
        if batches:
            stem, ext = os.path.splitext(csv_path)
            _write_csv(parsed.batches, f"{stem}-batches{ext or '.csv'}", index=False)
    if fmt == "table":
        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
            click.echo(parsed.epochs.to_string())
            if batches:
                click.echo("\n" + parsed.batches.to_string(index=False))
    elif fmt == "markdown":
        click.echo(mxnet_markdown(parsed.epochs))
        if batches:
            click.echo("\n" + _markdown(parsed.batches))
    for r in parsed.resumes:
        click.echo(f"resumed at Epoch[{r.epoch}] Batch [{r.batch}] lr={r.lr:g} ({r.source})", err=True)


if __name__ == "__main__":
    main()
