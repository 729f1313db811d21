"""The real MXNet 1.9.1 (.mxnet-venv, made by tools/setup_env.sh --oracle) as the benchmarks' baseline."""
import glob
import os
import subprocess
import time

from toolkit.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MXNET_PYTHON = os.path.join(REPO, ".mxnet-venv", "bin", "python")


def mxnet_tool(python: str, name: str) -> str:
    """Path of MXNet's tools/NAME (im2rec.py, parse_log.py) in the virtual environment of `python`."""
    if not os.path.exists(python):
        raise UserError(f"{python}: no MXNet interpreter there; make it with "
                        "bash tools/setup_env.sh --oracle, or pass --mxnet-python")
    venv = os.path.dirname(os.path.dirname(python))
    found = sorted(glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "mxnet", "tools", name)))
    if not found:
        raise UserError(f"{venv}: MXNet's tools/{name} not found in this environment; "
                        "remake it with: rm -rf .mxnet-venv && bash tools/setup_env.sh --oracle")
    return found[-1]


def timed_run(cmd) -> float:
    """Seconds `cmd` took; a failure is one line with the last line it printed."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"{os.path.basename(cmd[1])} exited with {proc.returncode}: {last}")
    return time.perf_counter() - t
