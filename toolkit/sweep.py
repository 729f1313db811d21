"""Sweeps (tools/sweep.py): a grid or a list of variants over training flags, each variant one run
with a readable prefix, run one after the other under torchrun or as one SLURM job array (submitit).

Every variant is checked by tools/train.py's own click command (its flags, choices and ranges) and
by the run configuration's checks before anything runs. A sweep started again skips finished runs,
resumes stopped and lost ones (a heartbeat that stopped) from their checkpoints (tools/resume.py)
and starts the others; what a run's state is comes from the journal (toolkit/journal.py), so nothing
else is kept. A run that exists already must have the configuration the sweep gives it
(check_identity: a changed flag is one line, never the old run's results).

Stops: locally, Ctrl-C reaches the run (its own handler writes the checkpoint) and the sweep stops
after it. Under SLURM, submitit's preemption/timeout signal is set to SIGTERM (SUBMITIT_PREEMPT_SIGNAL,
read by submitit at import; the sbatch file asks for --signal=TERM@90): the job's checkpoint()
passes SIGTERM to its torchrun, waits for the run's checkpoint, and returns the same job, which
submitit requeues and which then resumes.
"""
import dataclasses
import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

import click
import yaml

try:  # --slurm only: a sweep on this machine needs no submitit (check_slurm says what is missing)
    import submitit
    _Checkpointable = submitit.helpers.Checkpointable
except ImportError:
    submitit, _Checkpointable = None, object

from toolkit import journal
from toolkit.engine.status import own_earlier_life, read_status
from toolkit.errors import UserError

STOP_WAIT_S = 80    # SLURM signals 90 s before the limit; the checkpoint must be on disk before then
_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")


@dataclass
class Run:
    prefix: str
    variant: dict          # {flag name: value}, e.g. {"act": "elu"}
    argv: List[str] = field(default_factory=list)   # tools/train.py's arguments
    config: dict = field(default_factory=dict)      # the resolved configuration: the run's identity


def load_command(path: str) -> click.Command:
    """The click command of a tool script (tools/train.py), loaded from its file."""
    spec = importlib.util.spec_from_file_location("_sweep_train_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def parse_grid(specs) -> List[tuple]:
    grid = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        values = [v.strip() for v in values.split(",")]
        if not sep or not key.strip() or not all(values):
            raise UserError(f"--grid {spec}: expected FLAG=VALUE,VALUE,... (e.g. --grid act=relu,elu)")
        grid.append((key.strip(), values, f"--grid {spec}"))
    return grid


def load_variants(path: str) -> tuple:
    """A YAML or JSON file: a list of variants ({flag: value}, optionally name: ...) or a mapping
    {flag: [values]} (a grid). Returns (variants, grid)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"--variants {path}: cannot read it: {e.strerror or e}") from None
    kind = "JSON" if path.endswith(".json") else "YAML"
    try:
        data = json.loads(text, object_pairs_hook=_unique) if kind == "JSON" else yaml.load(text, _UniqueLoader)
    except (ValueError, yaml.YAMLError) as e:
        raise UserError(f"--variants {path}: not valid {kind}: {' '.join(str(e).split())}") from None
    where = f"--variants {path}"
    if isinstance(data, dict):
        grid = [(k, [_text(v) for v in (vs if isinstance(vs, list) else [vs])], where) for k, vs in data.items()]
        empty = [k for k, vs, _ in grid if not vs]
        if empty:
            raise UserError(f"{where}: {empty[0]}: no values (give a list of one or more)")
        return [], grid
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        return [{str(k): _text(v) for k, v in d.items()} for d in data], []
    raise UserError(f"{where}: expected a list of variants (flag: value mappings) or a mapping of "
                    "flag: [values]")


def _unique(pairs) -> dict:
    """JSON objects and YAML mappings with a key given twice are refused (both parsers keep the last)."""
    keys = [k for k, _ in pairs]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice is not None:
        raise ValueError(f"{twice!r} is given twice")
    return dict(pairs)


class _UniqueLoader(yaml.SafeLoader):
    pass


def _construct_unique(loader, node):
    loader.flatten_mapping(node)
    pairs = [(loader.construct_object(k, deep=True), loader.construct_object(v, deep=True)) for k, v in node.value]
    try:
        return _unique(pairs)
    except ValueError as e:
        raise yaml.constructor.ConstructorError(None, None, str(e), node.start_mark) from None


_UniqueLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique)


def _text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


def _option(command: click.Command, key: str, where: str) -> click.Option:
    flag = "--" + key.lstrip("-").replace("_", "-")
    for p in command.params:
        if isinstance(p, click.Option) and not p.hidden and flag in p.opts + p.secondary_opts:
            if p.name == "prefix":
                raise UserError(f"{where}: the sweep names each run (base name: --prefix given to every run)")
            if flag in p.secondary_opts:  # --grid no-nesterov=true would read as --nesterov
                raise UserError(f"{where}: name the switch as {p.opts[0][2:]}=true/false, not {flag[2:]}")
            return p
    raise UserError(f"{where}: tools/train.py has no flag {flag} (see tools/train.py --help)")


def _flag_args(option: click.Option, value: str, where: str) -> List[str]:
    if option.is_flag:
        on = value.lower() in ("1", "true", "yes", "on")
        if not on and value.lower() not in ("0", "false", "no", "off"):
            raise UserError(f"{where}: {option.opts[0]} is a switch: give true or false, not {value!r}")
        if not on and not option.secondary_opts:
            return []
        return [option.opts[0] if on else option.secondary_opts[0]]
    return [option.opts[0], value]


def _check(command: click.Command, argv: List[str], where: str) -> dict:
    """Parse `argv` as tools/train.py would, then build the run configuration (returned as a dict);
    errors in one line."""
    from toolkit.engine.config import make_config
    try:
        ctx = command.make_context("tools/train.py", list(argv), resilient_parsing=False)
    except click.exceptions.Exit:
        raise UserError(f"{where}: --help is not a training flag") from None
    except click.ClickException as e:
        raise UserError(f"{where}: {e.format_message().splitlines()[0]}") from None
    params = dict(ctx.params)
    try:
        return dataclasses.asdict(make_config(params.pop("recipe"), **params))
    except UserError as e:
        raise UserError(f"{where}: {e.message}") from None


def _given(command: click.Command, common: List[str]) -> dict:
    """The flags given to every run, parsed (not converted) by train.py's parser: {name: raw value}."""
    ctx = click.Context(command, info_name="tools/train.py")
    try:
        opts, args, _ = command.make_parser(ctx).parse_args(list(common))
    except click.ClickException as e:
        raise UserError(f"the flags given to every run: {e.format_message().splitlines()[0]}") from None
    if args:
        raise UserError(f"the flags given to every run: unexpected argument {args[0]!r} (flags go as --flag VALUE)")
    return opts


def dirs(command: click.Command, common: List[str]) -> tuple:
    """The logs and checkpoints folders the runs will use (train.py's defaults unless given)."""
    given = _given(command, common)
    return given.get("logs_dir") or "logs", given.get("checkpoints_dir") or "checkpoints"


def plan(command: click.Command, common: List[str], grid: List[tuple], variants: List[dict]) -> List[Run]:
    """The runs of the sweep (variants x grid), every one checked by tools/train.py's command first."""
    given = _given(command, common)
    specs = grid + [(k, [v], f"variant {i}") for i, d in enumerate(variants, 1) for k, v in d.items() if k != "name"]
    options, axes = {}, {}
    for key, values, where in specs:
        options[key] = _option(command, key, where)
        name = options[key].name  # --grid epochs=1 --grid num-epochs=2: one flag, two axes
        if where.startswith("variant ") and name not in axes:
            continue
        if name in axes:
            raise UserError(f"{where}: {options[key].opts[0]} is already an axis ({axes[name]}); give its "
                            "values in one place")
        axes[name] = where
        if options[key].name in given:
            raise UserError(f"{where}: {options[key].opts[0]} is also given to every run; give it in one place")
    if "recipe" not in given and not any(o.name == "recipe" for o in options.values()):
        raise UserError("--recipe: give it to every run (tools/sweep.py --recipe NAME ...) or sweep over it")
    first = {options[k].name: _flag_args(options[k], vs[0], w) for k, vs, w in grid}
    for key, values, where in grid:  # each value with the others' first: an error names its --grid
        others = [a for name, args in first.items() if name != options[key].name for a in args]
        for value in values:
            _check(command, common + others + _flag_args(options[key], value, where), where)
    base = given.get("prefix") or given.get("recipe") or "sweep"
    runs, seen = [], {}
    for i, variant in enumerate(variants or [{}], 1):
        for point in itertools.product(*[[(k, x) for x in vs] for k, vs, _ in grid]):
            flags = {k: v for k, v in {**variant, **dict(point)}.items() if k != "name"}
            label = lambda k, v: f"{options[k].opts[0][2:]}-{v}"  # noqa: E731 - "act-elu"
            parts = [variant["name"]] if variant.get("name") else [label(k, v) for k, v in variant.items()]
            name = "_".join(parts + [label(k, v) for k, v in point])
            prefix = _UNSAFE.sub("_", f"{base}_{name}" if name else base)
            if prefix in seen:
                raise UserError(f"runs {seen[prefix]} and {flags} would both be named {prefix!r}; "
                                "give the variants a name")
            seen[prefix] = flags
            argv = common + [a for k, v in flags.items() for a in _flag_args(options[k], v, k)] + ["--prefix", prefix]
            config = _check(command, argv, f"run {prefix}" + (f" (variant {i})" if variants else ""))
            runs.append(Run(prefix, flags, argv, config))
    return runs


def check_identity(runs: List[Run], logs_dir: str, ckpt_dir: str):
    """A run of the sweep that exists already (a log or checkpoints under its prefix) must be the
    same experiment: a flag that changed since (another --epochs, --lr, --data) is one line naming
    it, before anything runs, never a "skip (finished)" with the old run's results."""
    from toolkit.engine.config import flag_text, identity_differences
    for run in runs:
        if not journal.checkpoints(ckpt_dir, run.prefix) and not os.path.exists(os.path.join(logs_dir, run.prefix + ".log")):
            continue
        recorded = json.loads(journal.journal_row(run.prefix, logs_dir, ckpt_dir)["config"])
        changed = identity_differences(run.config, recorded) if recorded else []
        if changed:
            key, want, have = changed[0]
            more = f" (and {len(changed) - 1} more: {', '.join(k for k, _, _ in changed[1:])})" if len(changed) > 1 else ""
            extend = (f"continue it with tools/resume.py --prefix {run.prefix} {flag_text(key, want)}, "
                      if key == "epochs" else "")
            raise UserError(f"run {run.prefix} exists with {flag_text(key, have)}, this sweep gives it "
                            f"{flag_text(key, want)}{more}: another experiment needs another name (--prefix "
                            f"BASE); {extend}or delete its log and checkpoints to start it again")


def torchrun(nproc: int) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def next_step(run: Run, nproc: int, tools: str, logs_dir: str, ckpt_dir: str) -> tuple:
    """(what, command or None, why): train, resume, or skip."""
    found = journal.checkpoints(ckpt_dir, run.prefix).get(run.prefix)
    if not found and not os.path.exists(os.path.join(logs_dir, run.prefix + ".log")):
        return "train", torchrun(nproc) + [os.path.join(tools, "train.py")] + run.argv, ""
    row = journal.journal_row(run.prefix, logs_dir, ckpt_dir)
    if row["status"] == "running" and own_earlier_life(read_status(logs_dir, run.prefix)):
        row["status"] = "lost"  # this SLURM job, requeued after a hard kill (on this node or another)
    if row["status"] in ("finished", "running"):
        return "skip", None, f"{row['status']} {row['detail']}".strip()
    if row["status"] == "failed" and found:
        return "skip", None, f"failed ({row['detail']}); resume it by hand once mended"
    if not found:  # stopped, lost or failed before its first checkpoint: nothing to lose
        return "train", torchrun(nproc) + [os.path.join(tools, "train.py")] + run.argv, ""
    return "resume", torchrun(nproc) + [os.path.join(tools, "resume.py"), "--prefix", run.prefix,
                                        "--checkpoints-dir", ckpt_dir], ""


def _wait_forwarding(cmd: List[str]) -> bool:
    """Run `cmd` in this process group (a terminal's Ctrl-C reaches it); a SIGINT/SIGTERM sent to the
    sweep alone is passed on. Returns whether the sweep was asked to stop."""
    proc = subprocess.Popen(cmd)
    asked = []

    def forward(signum, frame):
        asked.append(signum)  # within the run's grace period, a repeat counts as the same request
        if proc.poll() is None:
            proc.send_signal(signum)
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        proc.wait()  # the run ends by itself, or by its own handler after the signal
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return bool(asked)


def run_local(runs: List[Run], nproc: int, tools: str, logs_dir: str, ckpt_dir: str, dry_run: bool) -> int:
    """One run after the other. 0: all finished; 1: some did not; 130: stopped by a signal."""
    code = 0
    for i, run in enumerate(runs, 1):
        what, cmd, why = next_step(run, nproc, tools, logs_dir, ckpt_dir)
        click.echo(f"[{i}/{len(runs)}] {run.prefix}: {what}" + (f" ({why})" if why else "")
                   + (f"\n    {shlex.join(cmd)}" if cmd and dry_run else ""), err=True)
        if cmd is None or dry_run:
            continue
        if _wait_forwarding(cmd):
            click.echo(f"sweep stopped in {run.prefix}; start the same sweep again to resume", err=True)
            return 130
        row = journal.journal_row(run.prefix, logs_dir, ckpt_dir)
        if row["status"] != "finished":
            code = 1
            click.echo(f"{run.prefix}: {row['status']} {row['detail']}", err=True)
    return code


class SweepJob(_Checkpointable):
    """One run as a SLURM job (submitit): train or resume it under torchrun over the job's GPUs.
    A Checkpointable: on the preemption/timeout signal, checkpoint() stops the run the Ctrl-C way and
    returns the same job, which submitit requeues and which resumes from that checkpoint."""

    def __init__(self, run: Run, nproc: int, tools: str, logs_dir: str, ckpt_dir: str, cwd: str):
        self.args = (run, nproc, tools, logs_dir, ckpt_dir, cwd)
        self._proc = None

    def __getstate__(self):
        return {"args": self.args, "_proc": None}  # a process does not travel in the pickle

    def __call__(self) -> dict:
        run, nproc, tools, logs_dir, ckpt_dir, cwd = self.args
        os.chdir(cwd)
        what, cmd, why = next_step(run, nproc, tools, logs_dir, ckpt_dir)
        print(f"{run.prefix}: {what} {why}".strip(), flush=True)
        if cmd is not None:
            print(shlex.join(cmd), flush=True)
            # its own session: the signal below reaches torchrun and its workers, not this process
            self._proc = subprocess.Popen(cmd, start_new_session=True)
            while self._proc.poll() is None:  # polled, not wait(): checkpoint() may run in between
                time.sleep(0.5)
        row = journal.journal_row(run.prefix, logs_dir, ckpt_dir)
        return {k: row.get(k) for k in ("prefix", "status", "detail", "epochs_done", "best_val_top1")}

    def checkpoint(self, *args, **kwargs):
        """Called by submitit's handler of the preemption/timeout signal, before it requeues."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            print(f"{self.args[0].prefix}: stopping the run (SIGTERM) for the requeue", flush=True)
            os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_WAIT_S
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
        return submitit.helpers.DelayedSubmission(SweepJob(*self.args))


def check_slurm(cluster: str):
    """--slurm before any work: submitit importable and, for a real cluster, SLURM's commands on the
    PATH (submitit's own check is a traceback from deep inside it)."""
    if submitit is None:
        raise UserError("--slurm: the submitit package is not installed in this environment; install it "
                         "(pip install submitit, as requirements-lock.txt pins it) or run the sweep here without --slurm")
    missing = [c for c in ("sbatch", "srun") if cluster == "slurm" and shutil.which(c) is None]
    if missing:
        raise UserError(f"--slurm: {' and '.join(missing)} not found on the PATH: this machine is not a SLURM "
                        "login node; run the sweep from one, rehearse it here with --slurm-cluster local, "
                        "or leave out --slurm to run the sweep on this machine")


def _preempt_on_sigterm():
    """SIGTERM as submitit's preemption/timeout signal: what SLURM sends on preemption, and what
    the run's own handler turns into a checkpoint. The jobs inherit the variable (submitit reads it
    when imported there); here it is read already, so the class attribute (sbatch's --signal) too."""
    os.environ["SUBMITIT_PREEMPT_SIGNAL"] = "TERM"
    from submitit.core.job_environment import JobEnvironment
    JobEnvironment.USR_SIG = "TERM"


def submit(runs: List[Run], nproc: int, tools: str, logs_dir: str, ckpt_dir: str, folder: str,
           cluster: Optional[str] = None, time_min: int = 1440, max_parallel: int = 8,
           partition: Optional[str] = None, extra: Optional[dict] = None, max_timeouts: int = 20):
    """Submit the runs that are not finished or running as one job array: one task per job over
    `nproc` GPUs of one node, at most `max_parallel` at once. Returns (jobs, their runs)."""
    _preempt_on_sigterm()
    todo = [r for r in runs if next_step(r, nproc, tools, logs_dir, ckpt_dir)[0] != "skip"]
    if not todo:
        return [], []
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=max_timeouts)
    params = dict(timeout_min=time_min, nodes=1, tasks_per_node=1, gpus_per_node=nproc, name="sweep",
                  slurm_array_parallelism=max_parallel, slurm_signal_delay_s=90)
    if partition:
        params["slurm_partition"] = partition
    if extra:
        params["slurm_additional_parameters"] = extra
    executor.update_parameters(**params)
    cwd = os.getcwd()
    jobs = executor.submit_array([SweepJob(r, nproc, tools, logs_dir, ckpt_dir, cwd) for r in todo])
    return jobs, todo
