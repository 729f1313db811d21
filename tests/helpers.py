"""Helpers shared by tests: run a tool script as a user would, or its click command in this process."""
import contextlib
import functools
import io
import os
import subprocess
import sys
import traceback
from typing import NamedTuple

import click
from click.testing import CliRunner

from tests.conftest import REPO


def run_tool(*args, check=True, env=None, cwd=None, timeout=600):
    """Run a tool script with this interpreter; return the CompletedProcess (text mode)."""
    cmd = [sys.executable] + [str(a) for a in args]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=cwd or REPO,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr}")
    return proc


def _call_main(main, argv, script):
    out, err = io.StringIO(), io.StringIO()
    code, exc = 0, None
    saved = sys.argv
    sys.argv = [script, *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            err.write(f"{e.code}\n")
    except Exception as e:  # noqa: BLE001 (reported as the interpreter would)
        exc = e
    finally:
        sys.argv = saved
    return out.getvalue(), err.getvalue(), code, exc


class Ran(NamedTuple):
    """What run_tool's CompletedProcess gives: exit status, stdout, stderr."""
    returncode: int
    stdout: str
    stderr: str


@functools.lru_cache(maxsize=None)
def tool_command(script: str):
    """The click command of tools/NAME.py, loaded once per test process."""
    from toolkit.sweep import load_command
    return load_command(str(REPO / script))


def invoke_tool(script, *args, check=True, env=None, cwd=None) -> Ran:
    """`python SCRIPT ARGS` in this process, through click's test runner: the same exit status,
    stdout and stderr (an uncaught exception as its traceback, status 1) without an interpreter
    start and torch's import (~3.5 s each). For what a tool does in one process: checks of its
    input, --help, short work; a run that needs its own process (signals, torchrun) uses run_tool."""
    script = str(script)
    if os.path.isabs(script):
        script = os.path.relpath(script, REPO)
    command = tool_command(script)
    old = os.getcwd()
    os.chdir(cwd or REPO)
    try:
        if isinstance(command, click.Command):
            result = CliRunner().invoke(command, [str(a) for a in args], env=env,
                                        prog_name=os.path.basename(script))
            stdout, stderr, code, exc = result.stdout, result.stderr, result.exit_code, result.exception
        else:  # an argparse tool (tools/im2rec.py): main(argv), its exit status from SystemExit
            stdout, stderr, code, exc = _call_main(command, [str(a) for a in args], script)
    finally:
        os.chdir(old)
    if exc is not None and not isinstance(exc, SystemExit):
        stderr += "".join(traceback.format_exception(exc))  # as the interpreter prints it
        code = 1
    ran = Ran(code, stdout, stderr)
    if check and code != 0:
        raise AssertionError(f"{script} {args} exited {code}\nstdout:\n{ran.stdout}\nstderr:\n{ran.stderr}")
    return ran


def write_separable_features(folder, classes: int, dim: int, sizes=(("train", 300), ("val", 120)), seed=0):
    """FOLDER/{split}.npy and .labels.npy: `classes` Gaussian clusters in `dim` dimensions (for
    train_linear), split by split from one generator."""
    import numpy as np
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(classes, dim))
    for split, n in sizes:
        y = np.arange(n) % classes
        np.save(os.path.join(folder, f"{split}.npy"),
                (centres[y] + rng.normal(0, 1, size=(n, dim))).astype(np.float32))
        np.save(os.path.join(folder, f"{split}.labels.npy"), y.astype(np.int64))
