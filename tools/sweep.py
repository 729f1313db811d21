#!/usr/bin/env python3
"""Run a grid or a list of variants over training flags, one run per variant, locally one after the
other (each under torchrun) or as one SLURM job array (submitit). Every other flag goes to every run.

    tools/sweep.py --grid act=relu,elu,prelu --grid init=he_normal,xavier_uniform \\
        --recipe resnet18 --width 0.25 --image-size 64 --epochs 10        # 6 runs, resnet18_act-elu_init-...
    tools/sweep.py --variants variants.yaml --recipe resnet50 --data data/imagenet --dry-run
    tools/sweep.py --slurm --nproc-per-node 8 --slurm-partition gpu --grid lr=0.1,0.2 --recipe resnet50 ...

Started again, it skips finished runs and resumes stopped ones (and lost ones: a run whose status
file's heartbeat stopped); a run that exists with another configuration (a flag changed since) is
refused in one line. Ctrl-C stops the current run with
its checkpoint (as tools/train.py does) and the sweep. It ends with the journal of its runs.
"""
import os
import sys

import click
import pandas as pd

from toolkit import journal
from toolkit.errors import UserError
from toolkit.sweep import (check_identity, check_slurm, dirs, load_command, load_variants, parse_grid,
                           plan, run_local, submit)

TOOLS = os.path.dirname(os.path.abspath(__file__))


def _pairs(specs, flag: str) -> dict:
    out = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {spec}: expected KEY=VALUE (e.g. {flag} account=myproject)")
        out[key] = value
    return out


def show_journal(runs, logs_dir: str, ckpt_dir: str):
    started = [r.prefix for r in runs if journal.checkpoints(ckpt_dir, r.prefix)
               or os.path.exists(os.path.join(logs_dir, r.prefix + ".log"))]
    if started:
        df = journal.journal(logs_dir, ckpt_dir, started)
        with pd.option_context("display.max_columns", None, "display.width", 250, "display.max_colwidth", 80):
            click.echo(journal.display(df).to_string(index=False))
        for line in journal.notes(df):
            click.echo(line)
    if len(started) < len(runs):
        click.echo(f"{len(runs) - len(started)} of {len(runs)} runs not started yet")


@click.command(context_settings={"max_content_width": 100, "ignore_unknown_options": True,
                                 "allow_extra_args": True})
@click.option("--grid", multiple=True, metavar="FLAG=V1,V2,...",
              help="One axis of the grid over a tools/train.py flag (repeat for more axes).")
@click.option("--variants", metavar="FILE", help="YAML/JSON: a list of {flag: value} variants (optional "
                                                 "name), or {flag: [values]} (a grid).")
@click.option("--nproc-per-node", "--nproc_per_node", "nproc", type=click.IntRange(min=1), default=1,
              show_default=True, help="Processes (GPUs) per run: torchrun's --nproc_per_node.")
@click.option("--dry-run", is_flag=True, help="Print the runs and their commands; run nothing.")
@click.option("--slurm", is_flag=True, help="Submit the runs as one SLURM job array (submitit).")
@click.option("--slurm-cluster", type=click.Choice(["slurm", "local", "debug"]), default="slurm", show_default=True,
              help="local/debug: submitit's executors on this machine, to rehearse the SLURM path.")
@click.option("--slurm-folder", default=None, help="submitit's job files and logs [LOGS/submitit].")
@click.option("--slurm-time", type=click.IntRange(min=1), default=1440, show_default=True,
              help="Minutes per job; a run that needs longer is requeued and resumes.")
@click.option("--slurm-max-parallel", type=click.IntRange(min=1), default=8, show_default=True,
              help="Jobs of the array running at once.")
@click.option("--slurm-partition", default=None)
@click.option("--slurm-param", multiple=True, metavar="KEY=VALUE",
              help="Any other sbatch option, e.g. account=proj, qos=high, constraint=a100 (repeat).")
@click.option("--slurm-wait", is_flag=True, help="Wait for the jobs to end before printing the journal.")
@click.pass_context
def main(ctx, grid, variants, nproc, dry_run, slurm, slurm_cluster, slurm_folder, slurm_time,
         slurm_max_parallel, slurm_partition, slurm_param, slurm_wait):
    """Sweep over tools/train.py flags; every flag not listed here goes to every run."""
    if not grid and not variants:
        raise UserError("nothing to sweep: give --grid FLAG=V1,V2 (repeatable) or --variants FILE")
    if slurm and not dry_run:
        check_slurm(slurm_cluster)
    common = list(ctx.args)
    extra = _pairs(slurm_param, "--slurm-param")
    command = load_command(os.path.join(TOOLS, "train.py"))
    file_variants, file_grid = load_variants(variants) if variants else ([], [])
    runs = plan(command, common, parse_grid(grid) + file_grid, file_variants)
    logs_dir, ckpt_dir = dirs(command, common)
    check_identity(runs, logs_dir, ckpt_dir)
    click.echo(f"{len(runs)} runs: {', '.join(r.prefix for r in runs)}", err=True)
    if slurm and not dry_run:
        folder = slurm_folder or os.path.join(logs_dir, "submitit")
        jobs, todo = submit(runs, nproc, TOOLS, logs_dir, ckpt_dir, folder, slurm_cluster, slurm_time,
                            slurm_max_parallel, slurm_partition, extra)
        code = 0
        if jobs:
            click.echo(f"submitted {len(jobs)} runs as jobs {jobs[0].job_id} .. {jobs[-1].job_id}; their "
                       f"output in {folder}/; follow with tools/runs.py {' '.join(r.prefix for r in todo)}", err=True)
        for job, run in zip(jobs if slurm_wait else [], todo):
            try:
                result = job.result()
                code = code or int(result["status"] != "finished")
            except Exception as e:  # noqa: BLE001 - a job that failed: say so, look at the others
                click.echo(f"{run.prefix}: job {job.job_id} failed: {str(e).strip().splitlines()[-1]}", err=True)
                code = 1
    else:
        code = run_local(runs, nproc, TOOLS, logs_dir, ckpt_dir, dry_run)
        if slurm:
            click.echo(f"--slurm: these {len(runs)} runs would be one job array, {nproc} GPU(s) per job", err=True)
    if not dry_run:
        show_journal(runs, logs_dir, ckpt_dir)
    sys.exit(code)


if __name__ == "__main__":
    main()
