"""What every check shares: the sizes of a run (GPU or --cpu), its context and how a check reports."""
import dataclasses
import json
import os
import re
import subprocess
import sys
from typing import Dict, List, Optional

RESULT = "GPUCHECK_RESULT "

# Sized to fit 8 minutes after set-up on one H100/H200-class GPU (estimates; unverified on GPU), and
# about two minutes on 2 busy CPU cores with --cpu. Every key can be changed with --set KEY=VALUE.
# qs_min_rank1: the quickstart's validation rank-1 floor (10 classes: chance 0.1). The --cpu quickstart
# trains 8 epochs of 5 steps (measured here: 0.30-0.50 from the 5th epoch; with 3 epochs the BatchNorm
# statistics had not settled and it scored 0.075, under chance, and passed); the GPU one reaches about
# 0.95 (the README's quickstart), unverified on GPU.
PROFILES = {
    "gpu": dict(toy_per_class=250, qs_epochs=6, qs_stop_epoch=3, qs_log_every=10,
                exact_epochs=3, exact_stop_epoch=1, exact_image_size=64, exact_batch=32, exact_log_every=10,
                branch_epochs=1, branch_batch=32, eval_workers=2, compile_on_cpu=0,
                train_recipe="resnet50", train_width=1.0, train_batch=256, train_size=224, train_steps=10,
                train_rounds=3, loader_images=4000, loader_batch=128, loader_size=224, loader_workers=4,
                loader_seconds=8.0, qs_min_rank1=0.6, agree_size=64, agree_batch=32),
    "cpu": dict(toy_per_class=20, qs_epochs=8, qs_stop_epoch=1, qs_log_every=1,
                exact_epochs=2, exact_stop_epoch=0, exact_image_size=32, exact_batch=16, exact_log_every=1,
                branch_epochs=1, branch_batch=16, eval_workers=0, compile_on_cpu=0,
                train_recipe="resnet18", train_width=0.25, train_batch=8, train_size=32, train_steps=2,
                train_rounds=1, loader_images=200, loader_batch=16, loader_size=64, loader_workers=1,
                loader_seconds=1.0, qs_min_rank1=0.2, agree_size=64, agree_batch=16),
}


@dataclasses.dataclass
class Context:
    mode: str                  # "gpu" or "cpu"
    workdir: str               # everything a check writes goes under it
    repo: str                  # the clone's root (tools/ and the quickstart live there)
    sizes: Dict[str, object]
    nproc: int = 1             # processes per torchrun: one per GPU (1 with --cpu, as on a one-GPU machine)
    latest: bool = False       # the environment is .venv-latest (tools/gpu_check.sh --latest)

    @property
    def gpu(self) -> bool:
        return self.mode == "gpu"

    def path(self, *parts) -> str:
        return os.path.join(self.workdir, *parts)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Context":
        return cls(**json.loads(text))


class CheckFailed(Exception):
    """A check's own verdict: FAIL with this one-line reason (figures measured so far kept)."""

    def __init__(self, reason: str, **figures):
        super().__init__(reason)
        self.reason, self.figures = reason, figures


def report(status: str, reason: str = "", **figures):
    print(RESULT + json.dumps({"status": status, "reason": reason, "figures": figures}), flush=True)


def python() -> List[str]:
    return [sys.executable]


def torchrun(nproc: int) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def run(ctx: Context, cmd: List[str], timeout: float = 600, env: Optional[dict] = None,
        what: str = "") -> subprocess.CompletedProcess:
    """Run a public tool from the repository root, its output (stderr merged) streamed into this
    check's log as it comes (a check killed at its limit still shows how far the tool got); a non-zero
    exit is a CheckFailed naming the command and its last line of output."""
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=ctx.repo, env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace")
    lines = []
    for text in proc.stdout:  # bounded: the runner kills this check and all it started at its limit
        sys.stdout.write(text)
        sys.stdout.flush()
        lines.append(text)
    rc = proc.wait(timeout=timeout)
    output = "".join(lines)
    if rc != 0:
        raise CheckFailed(f"{what or os.path.basename(cmd[1] if len(cmd) > 1 else cmd[0])} exited "
                          f"{rc}: {last_line(output)}")
    return subprocess.CompletedProcess(cmd, rc, output, "")


def last_line(text: str) -> str:
    """The last meaningful line of a tool's output (tracebacks end in the error; torchrun's own
    summary banner is skipped), shortened to fit a check line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not set(ln.strip()) <= set("=-")]
    errors = [ln for ln in lines if re.match(r"(Error|[A-Za-z_.]*(Error|Exception)):", ln)]
    return ((errors or lines or ["no output"])[-1])[:240]


def json_last_line(text: str) -> dict:
    """The JSON object a tool printed last (--json)."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise CheckFailed("no JSON line in the tool's output")


def toy_data(ctx: Context) -> str:
    """The toy dataset the quickstart packed, or (when it did not get that far) one made here."""
    packed = ctx.path("quickstart", "data", "toy")
    if os.path.exists(os.path.join(packed, "toy_val.idx")) and os.path.exists(os.path.join(packed, "classes.tsv")):
        return packed
    own = ctx.path("toy")
    if not os.path.exists(os.path.join(own, "classes.tsv")):
        run(ctx, python() + ["tools/make_toy.py", "--out", own, "--images-per-class",
                             str(ctx.sizes["toy_per_class"])], what="tools/make_toy.py")
    return own
