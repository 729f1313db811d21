"""Helpers shared by tests: run a tool script as a user would."""
import os
import subprocess
import sys

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
