"""Run the checks in order, each in its own process (session) under its own time limit and the overall
budget; print one line per check and rewrite the JSON summary after each, so a run cut short still
reports what it reached. A check that fails, hangs or crashes does not stop the ones after it."""
import dataclasses
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

from toolkit.atomic import atomic_open
from toolkit.gpucheck.common import RESULT, Context


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    limit: float                       # seconds; the child and all it started are killed after it
    what: str                          # one line for --help and the README
    needs_gpu: bool = False            # skipped in GPU mode once torch-device found no GPU
    cpu_skip: str = ""                 # with --cpu: skipped, for this reason


# In order: cheap and fundamental first, the long torch.compile measurement last (the budget cuts the end).
CHECKS = [
    Check("gpu-facts", 30, "nvidia-smi: GPUs, driver, CUDA version, memory", cpu_skip="--cpu: nvidia-smi not used"),
    Check("torch-device", 60, "torch sees the GPU (CUDA, cuDNN, bf16) and computes on it"),
    Check("process-group", 60, "a one-process NCCL group (Gloo with --cpu): init, all-reduce, destroy",
          needs_gpu=True),
    Check("quickstart", 180, "tools/quickstart.sh on the GPU: torchrun, automatic loader (DALI mixed decode), "
          "Ctrl-C, resume, evaluate", needs_gpu=True),
    Check("loaders-agree", 90, "the DALI loader's evaluation tensors (mixed decode; DALI's CPU pipeline with --cpu) "
          "vs the torch loader's on the same records, within a stated tolerance", needs_gpu=True),
    Check("resume-exact", 180, "stop and resume vs a straight run: final weights equal (else the difference, "
          "the non-deterministic kernels and whether --deterministic makes it exact)", needs_gpu=True),
    Check("fp16-accum", 90, "training with --amp fp16 (loss scaler) and --grad-accum 2", needs_gpu=True),
    Check("ten-crop", 60, "tools/evaluate.py --ten-crop and a centre-crop evaluation on the GPU", needs_gpu=True),
    Check("ckpt-on-cpu", 60, "the GPU-written checkpoint evaluated by tools/evaluate.py on the CPU", needs_gpu=True),
    Check("train-step", 120, "ResNet-50 step, AMP bf16, channels-last: engine vs a bare PyTorch loop", needs_gpu=True),
    Check("loader", 120, "the DALI GPU loader vs DALI's own pipeline (mixed decode) on the same shards",
          needs_gpu=True),
    Check("train-step-compile", 300, "as train-step, with torch.compile (both loops compiled); with --cpu only "
          "with --set compile_on_cpu=1", needs_gpu=True),
]
BY_NAME = {c.name: c for c in CHECKS}


def descendants(pid: int) -> List[int]:
    """Every process started under `pid`, its own session's included (the quickstart runs torchrun
    under setsid so that a Ctrl-C reaches it): read from /proc before anything is killed."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen):
    """SIGKILL the check's process, its group and everything it started (found before the kill)."""
    victims = descendants(proc.pid)
    for pid in [proc.pid] + victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=30)


def parse_result(log_path: str) -> Optional[dict]:
    try:
        with open(log_path, errors="replace") as f:
            lines = [ln for ln in f if ln.startswith(RESULT)]
    except OSError:
        return None
    return json.loads(lines[-1][len(RESULT):]) if lines else None


def tail(log_path: str) -> str:
    from toolkit.gpucheck.common import last_line
    try:
        with open(log_path, errors="replace") as f:
            return last_line(f.read()[-20000:])
    except OSError:
        return "no output"


def run_child(cmd: List[str], log_path: str, limit: float, env: dict) -> dict:
    """One check in its own session; its stdout/stderr go to `log_path`."""
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except KeyboardInterrupt:  # the user's Ctrl-C reaches only this process: end the check too
            kill_tree(proc)
            raise
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            return {"status": "FAIL", "reason": f"timed out after {limit:.0f} s (killed; log: {log_path})",
                    "figures": {}, "seconds": time.monotonic() - t0}
    result = parse_result(log_path)
    if result is None:
        result = {"status": "FAIL", "reason": f"exited {rc} without a result: {tail(log_path)} (log: {log_path})",
                  "figures": {}}
    elif result["status"] == "FAIL":
        result["reason"] += f" (log: {log_path})"
    result["seconds"] = time.monotonic() - t0
    return result


def fmt_figure(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def line(name: str, result: dict) -> str:
    figures = " ".join(f"{k}={fmt_figure(v)}" for k, v in result.get("figures", {}).items())
    reason = f" ({result['reason']})" if result.get("reason") else ""
    return f"[gpu-check] {name:<19s} {result['status']:<4s} {result['seconds']:6.1f} s  {figures}{reason}".rstrip()


class Summary:
    """The JSON summary, rewritten (temp file, rename) after every check."""

    def __init__(self, path: str, ctx: Context, setup_seconds: Optional[float], planned: List[str]):
        self.path = path
        self.data = {"mode": ctx.mode, "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"), "setup_seconds": setup_seconds, "workdir": ctx.workdir, "nproc": ctx.nproc,
            "sizes": ctx.sizes, "planned": planned, "checks": {}, "passed": [], "failed": [], "skipped": [],
            "complete": False, "ok": False}

    def add(self, name: str, result: dict):
        self.data["checks"][name] = {k: (round(v, 2) if k == "seconds" else v) for k, v in result.items()}
        key = {"ok": "passed", "FAIL": "failed", "SKIP": "skipped"}[result["status"]]
        self.data[key].append(name)
        self.data["ok"] = not self.data["failed"]
        self.data["complete"] = len(self.data["checks"]) == len(self.data["planned"])
        self.write()

    def write(self):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with atomic_open(self.path) as f:
            json.dump(self.data, f, indent=1)
            f.write("\n")


def run_checks(ctx: Context, checks: List[Check], summary: Summary, budget: float,
               command: Callable[[Check], List[str]], env: dict, echo=print) -> dict:
    """Run `checks` in order within `budget` seconds; returns the summary's data."""
    deadline = time.monotonic() + budget
    os.makedirs(ctx.path("logs"), exist_ok=True)
    for check in checks:
        left = deadline - time.monotonic()
        skip = skip_reason(check, ctx, summary.data, left)
        if skip:
            result = {"status": "SKIP", "reason": skip, "figures": {}, "seconds": 0.0}
        else:
            result = run_child(command(check), ctx.path("logs", check.name + ".log"), min(check.limit, left), env)
        summary.add(check.name, result)
        echo(line(check.name, result))
    return summary.data


def skip_reason(check: Check, ctx: Context, data: dict, left: float) -> str:
    if not ctx.gpu and check.cpu_skip:
        return check.cpu_skip
    if ctx.gpu and check.needs_gpu and data["checks"].get("torch-device", {}).get("status") == "FAIL":
        return "torch sees no GPU (see torch-device)"
    if left < 5:
        return "the overall --budget is spent"
    return ""


def child_command(ctx: Context) -> Callable[[Check], List[str]]:
    return lambda check: [sys.executable, "-m", "toolkit.gpucheck", check.name, ctx.to_json()]
