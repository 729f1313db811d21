"""`tools/benchmark.py gpu` (run by tools/gpu_check.sh after the set-up): every GPU path checked once,
each check in its own process under its own time limit, within an overall budget; one line per
check, then the JSON summary (also written to --json-out after every check). See toolkit/gpucheck."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys

import click

from toolkit.errors import UserError
from toolkit.gpucheck.common import PROFILES, Context
from toolkit.gpucheck.runner import BY_NAME, CHECKS, Summary, child_command, run_checks

MARKER = ".gpu-check"
CPU_SLOWER = 3  # --cpu: each check's limit times this (a small shared CPU; each tool's start imports torch)


def gpu_count() -> int:
    """GPUs nvidia-smi lists (torch is not initialised here: the checks own the GPU)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 1
    return max(1, sum(ln.startswith("GPU ") for ln in out.splitlines()))


def parse_pairs(values, option: str, convert) -> dict:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"{option} {item}: expected KEY=VALUE")
        out[key.strip()] = convert(key.strip(), value.strip())
    return out


def sizes_for(mode: str, settings) -> dict:
    sizes = dict(PROFILES[mode])

    def convert(key, value):
        if key not in sizes:
            raise UserError(f"--set {key}: unknown size; known: {', '.join(sorted(sizes))}")
        try:
            return type(sizes[key])(value)
        except ValueError:
            raise UserError(f"--set {key}={value}: expected a {type(sizes[key]).__name__}") from None
    sizes.update(parse_pairs(settings, "--set", convert))
    return sizes


def limits_for(values) -> dict:
    def convert(key, value):
        if key not in BY_NAME:
            raise UserError(f"--limit {key}: no such check; checks: {', '.join(BY_NAME)}")
        try:
            return float(value)
        except ValueError:
            raise UserError(f"--limit {key}={value}: expected seconds") from None
    return parse_pairs(values, "--limit", convert)


def fresh_workdir(path: str):
    """Cleared at every run; only a folder this command made (its marker file) is ever removed."""
    if os.path.isdir(path) and os.listdir(path) and not os.path.exists(os.path.join(path, MARKER)):
        raise UserError(f"--workdir {path}: not empty and not made by tools/gpu_check.sh; give an empty "
                        "or new folder")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    open(os.path.join(path, MARKER), "w").close()


def _interrupted(signum, frame):
    raise KeyboardInterrupt


@click.command()
@click.option("--cpu", is_flag=True, help="The same checks on the CPU with tiny sizes (DALI's CPU pipeline "
              "in place of mixed decode, Gloo in place of NCCL; nvidia-smi skipped).")
@click.option("--only", type=click.Choice([c.name for c in CHECKS]), multiple=True,
              help="Run only this check (repeatable); default: all, in order.")
@click.option("--budget", type=click.FloatRange(min=1), default=480, show_default=True,
              help="Seconds for all checks together; a check is killed when it is spent, later ones SKIP.")
@click.option("--limit", "limits", multiple=True, metavar="CHECK=SECONDS",
              help="Another time limit for a check (the defaults: tools/benchmark.py gpu --list; x3 with --cpu).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Another size (toy_per_class, qs_epochs, train_batch, loader_images, ...: see --list).")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="Processes per torchrun (default: one per GPU, up to 8; 1 with --cpu).")
@click.option("--workdir", default="bench-data/gpu-check", show_default=True,
              help="Scratch folder (cleared at each run); check logs in WORKDIR/logs/CHECK.log.")
@click.option("--json-out", default="logs/gpu_check.json", show_default=True,
              help="The JSON summary, rewritten after every check.")
@click.option("--setup-seconds", type=float, default=None, help="Set-up time to record (tools/gpu_check.sh).")
@click.option("--latest", is_flag=True, help="The environment is .venv-latest (tools/gpu_check.sh --latest).")
@click.option("--list", "list_only", is_flag=True, help="List the checks, their limits and sizes; run nothing.")
def cli(cpu, only, budget, limits, settings, nproc, workdir, json_out, setup_seconds, latest, list_only):
    """Check every GPU path once (the NCCL group, the quickstart with DALI mixed decode, stop-and-resume
    exactness, AMP, ten-crop, throughput ratios); one line per check, the JSON summary last."""
    mode = "cpu" if cpu else "gpu"
    if list_only:
        for c in CHECKS:
            print(f"{c.name:<19s} {c.limit * (1 if mode == 'gpu' else CPU_SLOWER):4.0f} s  {c.what}")
        print("sizes (--set KEY=VALUE): " + " ".join(f"{k}={v}" for k, v in sizes_for(mode, settings).items()))
        return
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ctx = Context(mode=mode, workdir=os.path.abspath(workdir), repo=repo, sizes=sizes_for(mode, settings),
                  nproc=nproc or (1 if cpu else min(gpu_count(), 8)), latest=latest)
    overrides = limits_for(limits)
    slower = 1 if mode == "gpu" else CPU_SLOWER
    checks = [dataclasses.replace(c, limit=overrides.get(c.name, c.limit * slower))
              for c in CHECKS if not only or c.name in only]
    fresh_workdir(ctx.workdir)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if cpu:  # on a GPU machine too: nothing may touch the GPU
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    os.chdir(repo)
    summary = Summary(os.path.abspath(json_out), ctx, setup_seconds, [c.name for c in checks])
    summary.write()
    print(f"[gpu-check] mode {mode}, {ctx.nproc} process(es) per torchrun, budget {budget:.0f} s, set-up "
          f"{'%.0f s' % setup_seconds if setup_seconds is not None else 'not timed'}; logs in {ctx.path('logs')}",
          flush=True)
    signal.signal(signal.SIGTERM, _interrupted)  # as Ctrl-C: end the running check with all it started
    try:
        data = run_checks(ctx, checks, summary, budget, child_command(ctx), env,
                          echo=lambda text: print(text, flush=True))
    except KeyboardInterrupt:
        print(f"[gpu-check] interrupted; what it reached is in {json_out}", file=sys.stderr)
        print(json.dumps(summary.data))
        sys.exit(130)
    print(f"[gpu-check] {len(data['passed'])} ok, {len(data['failed'])} FAIL, {len(data['skipped'])} SKIP; "
          f"summary in {json_out}")
    print(json.dumps(data))
    sys.exit(0 if data["ok"] else 1)
