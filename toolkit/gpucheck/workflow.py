"""Checks 2 and 4 through the public tools (tools/quickstart.sh, train.py, resume.py, evaluate.py): the
quickstart on the GPU, stop-and-resume bit-exactness, fp16 with the loss scaler and gradient
accumulation, ten-crop evaluation, a checkpoint written on the GPU evaluated on the CPU."""
import glob
import json
import math
import os
import re
import signal
import statistics
import subprocess
import time

from toolkit.gpucheck.agree import accuracy_floor
from toolkit.gpucheck.common import CheckFailed, Context, json_last_line, python, run, toy_data, torchrun

DETERMINISTIC = "--deterministic (cudnn.deterministic, torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG)"


def loader_args(ctx: Context) -> list:
    """GPU: the automatic choice (DALI, mixed decode). --cpu: DALI's CPU pipeline in its place."""
    return [] if ctx.gpu else ["--loader", "dali"]


def read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def quickstart(ctx: Context) -> dict:
    s, out = ctx.sizes, ctx.path("quickstart")
    env = {"QUICKSTART_DIR": out, "QUICKSTART_EPOCHS": str(s["qs_epochs"]), "QUICKSTART_STOP_EPOCH":
           str(s["qs_stop_epoch"]), "QUICKSTART_IMAGES_PER_CLASS": str(s["toy_per_class"]),
           "QUICKSTART_LOG_EVERY": str(s["qs_log_every"]), "QUICKSTART_NPROC": str(ctx.nproc),
           "QUICKSTART_TRAIN_ARGS": " ".join(loader_args(ctx))}
    run(ctx, ["bash", "tools/quickstart.sh"] + (["--latest"] if ctx.latest else []), env=env,
        what="tools/quickstart.sh")
    log = read(os.path.join(out, "logs", "toy_resnet18.log"))
    header = re.search(r"world size (\d+), device (\S+) \((.*?)\), loader (\w+)", log)
    stop = re.search(r"Stopped (?:at|after) Epoch\[\d+\](?: Batch \[\d+\])?", log)
    evaluation = json_last_line(read(os.path.join(out, "logs", "toy_resnet18-eval.txt")))
    speeds = [float(v) for v in re.findall(r"Speed: ([\d.]+) samples/sec", log)]
    figures = {"loader": header[4] if header else "?", "device": header[2] if header else "?",
               "world": int(header[1]) if header else 0, "stopped": stop[0] if stop else "no",
               "val_rank1": evaluation["rank1"], "val_rank5": evaluation["rank5"],
               "train_samples_per_s": round(statistics.median(speeds[1:] or speeds or [0.0]), 1)}
    if figures["loader"] != "dali":
        raise CheckFailed(f"the run used loader {figures['loader']}, not dali", **figures)
    if ctx.gpu and not figures["device"].startswith("cuda"):
        raise CheckFailed(f"the run trained on {figures['device']}, not the GPU", **figures)
    if not stop or "Resumed training from" not in log:
        raise CheckFailed("the log shows no Ctrl-C stop and resume", **figures)
    return accuracy_floor(figures, float(s["qs_min_rank1"]))


# --- stop and resume vs a straight run --------------------------------------------------------------

def _train_cmd(ctx: Context, data: str, prefix: str, extra=()) -> list:
    s = ctx.sizes
    return torchrun(ctx.nproc) + [
        "tools/train.py", "--recipe", "resnet18", "--width", "0.25", "--image-size", str(s["exact_image_size"]),
        "--batch-size", str(s["exact_batch"]), "--epochs", str(s["exact_epochs"]), "--lr", "0.1",
        "--lr-schedule", "cosine", "--warmup-epochs", "0.5", "--log-every", str(s["exact_log_every"]),
        "--data", data, "--prefix", prefix, "--logs-dir", ctx.path("exact", "logs"),
        "--checkpoints-dir", ctx.path("exact", "ck"), *loader_args(ctx), *extra]


def _start(ctx: Context, data: str, prefix: str, extra=()) -> subprocess.Popen:
    """A training run in its own process group (so that a SIGINT reaches torchrun and every rank,
    as a terminal's Ctrl-C does); output in exact/PREFIX.out."""
    os.makedirs(ctx.path("exact", "logs"), exist_ok=True)
    cmd = _train_cmd(ctx, data, prefix, extra)
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, cwd=ctx.repo, stdout=open(ctx.path("exact", prefix + ".out"), "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _interrupt(ctx: Context, proc: subprocess.Popen, prefix: str, timeout: float = 150.0) -> str:
    """Ctrl-C when the log shows the first batch line of the stop epoch; returns where it stopped."""
    log, pattern = ctx.path("exact", "logs", prefix + ".log"), f"Epoch[{ctx.sizes['exact_stop_epoch']}] Batch ["
    deadline = time.monotonic() + timeout
    while not (os.path.exists(log) and pattern in read(log)):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise CheckFailed(f"{prefix}: {'ended' if proc.poll() is not None else 'no progress'} before "
                              f"{pattern}...; see {ctx.path('exact', prefix + '.out')}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=timeout)
    stop = re.search(r"Stopped (?:at|after) Epoch\[\d+\](?: Batch \[\d+\])?", read(log))
    if not stop:
        raise CheckFailed(f"{prefix}: no stop checkpoint after the Ctrl-C (the run ended first: raise --set "
                          "exact_epochs)")
    return stop[0]


def _finish(ctx: Context, proc: subprocess.Popen, prefix: str, timeout: float = 150.0):
    if proc.wait(timeout=timeout) != 0:
        raise CheckFailed(f"{prefix}: tools/train.py exited {proc.returncode}; "
                          f"see {ctx.path('exact', prefix + '.out')}")


def _resume(ctx: Context, prefix: str) -> str:
    proc = run(ctx, torchrun(ctx.nproc) + ["tools/resume.py", "--prefix", prefix, "--checkpoints-dir",
                                           ctx.path("exact", "ck")], what=f"tools/resume.py --prefix {prefix}")
    return proc.stdout + proc.stderr


def weight_difference(a: str, b: str) -> tuple:
    """(max |a - b| over the models' floating-point tensors, names of the tensors that differ)."""
    import torch
    wa, wb = (torch.load(p, map_location="cpu", weights_only=True)["model"] for p in (a, b))
    diffs = {k: (wa[k].double() - wb[k].double()).abs().max().item() if wa[k].is_floating_point()
             else float(not torch.equal(wa[k], wb[k])) for k in wa}
    return max(diffs.values()), [k for k, d in diffs.items() if d > 0]


def _final(ctx: Context, prefix: str) -> str:
    return ctx.path("exact", "ck", f"{prefix}-{ctx.sizes['exact_epochs']:04d}.pt")


def _pair(ctx: Context, data: str, tag: str, extra=(), also=()) -> tuple:
    """A straight run and a stopped-and-resumed one side by side (plus `also`, more straight runs);
    returns (max abs difference, differing tensors, where it stopped, output of the runs)."""
    runs = {name: _start(ctx, data, name, extra) for name in (f"{tag}straight", f"{tag}stopped", *also)}
    stopped = _interrupt(ctx, runs[f"{tag}stopped"], f"{tag}stopped")
    for name in (f"{tag}straight", *also):
        _finish(ctx, runs[name], name)
    output = _resume(ctx, f"{tag}stopped") + "".join(read(ctx.path("exact", n + ".out")) for n in runs)
    diff, keys = weight_difference(_final(ctx, f"{tag}straight"), _final(ctx, f"{tag}stopped"))
    return diff, keys, stopped, output


def resume_exact(ctx: Context) -> dict:
    data = toy_data(ctx)
    diff, keys, stopped, _ = _pair(ctx, data, "")
    figures = {"stopped": stopped, "max_abs_diff": diff, "exact": diff == 0}
    if diff == 0:
        return figures
    # not exact: is a straight run even repeatable, and do the deterministic kernels make it exact?
    figures["differing_tensors"] = keys[:5] + ([f"... {len(keys)} in all"] if len(keys) > 5 else [])
    det_diff, _, _, output = _pair(ctx, data, "det-", ["--deterministic"])
    again = _start(ctx, data, "again")
    _finish(ctx, again, "again")
    figures["run_to_run_diff"] = weight_difference(_final(ctx, "straight"), _final(ctx, "again"))[0]
    figures["deterministic_diff"] = det_diff
    figures["nondeterministic_ops"] = sorted(set(re.findall(r"(\w+) does not have a deterministic implementation",
                                                            output)))
    if det_diff == 0:
        figures["exact_with"] = DETERMINISTIC
        return figures
    raise CheckFailed(f"stop and resume differ from a straight run by {diff:.3g}, {det_diff:.3g} with "
                      "--deterministic", **figures)


# --- the engine's GPU-only branches -----------------------------------------------------------------

def fp16_accum(ctx: Context) -> dict:
    import torch
    s, data = ctx.sizes, toy_data(ctx)
    ck, logs = ctx.path("branches", "ck"), ctx.path("branches", "logs")
    run(ctx, torchrun(ctx.nproc) + [
        "tools/train.py", "--recipe", "resnet18", "--width", "0.25", "--image-size", "64", "--batch-size",
        str(s["branch_batch"]), "--epochs", str(s["branch_epochs"]), "--lr", "0.05", "--amp", "fp16",
        "--grad-accum", "2", "--log-every", "5", "--data", data, "--prefix", "fp16accum", "--logs-dir", logs,
        "--checkpoints-dir", ck, *loader_args(ctx)], what="tools/train.py --amp fp16 --grad-accum 2")
    state = torch.load(os.path.join(ck, f"fp16accum-{s['branch_epochs']:04d}.pt"), map_location="cpu",
                       weights_only=True)
    log = read(os.path.join(logs, "fp16accum.log"))
    batches = max(int(b) for b in re.findall(r"Epoch\[0\] Batch \[\d+-(\d+)\]", log))
    scale = (state["scaler"] or {}).get("scale")
    figures = {"loss_scale": scale, "batches_per_epoch": batches, "optimizer_steps": state["step"],
               "train_ce": float(re.findall(r"Train-cross-entropy=([\d.eE+-]+|nan|inf)", log)[-1])}
    if not scale or not math.isfinite(scale):
        raise CheckFailed(f"the checkpoint holds no usable loss-scaler state ({state['scaler']!r})", **figures)
    if state["step"] != s["branch_epochs"] * math.ceil(batches / 2):
        raise CheckFailed(f"{state['step']} optimizer steps for {batches} batches per epoch with --grad-accum 2",
                          **figures)
    if not math.isfinite(figures["train_ce"]):
        raise CheckFailed("the training loss is not finite", **figures)
    return figures


def branch_checkpoint(ctx: Context) -> tuple:
    """(folder, prefix) of the fp16-accum run's checkpoints, else the quickstart's."""
    for ck, prefix in ((ctx.path("branches", "ck"), "fp16accum"),
                       (ctx.path("quickstart", "checkpoints"), "toy_resnet18")):
        if glob.glob(os.path.join(ck, prefix + "-[0-9][0-9][0-9][0-9].pt")):
            return ck, prefix
    raise CheckFailed("no checkpoint to evaluate (fp16-accum and quickstart wrote none)")


def _evaluate(ctx: Context, *extra, env=None) -> dict:
    ck, prefix = branch_checkpoint(ctx)
    proc = run(ctx, python() + ["tools/evaluate.py", "--checkpoints-dir", ck, "--prefix", prefix, "--json",
                                "--workers", str(ctx.sizes["eval_workers"]), "--out-dir",
                                ctx.path("branches", "eval"), *extra], env=env,
               what="tools/evaluate.py " + " ".join(extra))
    return json_last_line(proc.stdout)


def ten_crop(ctx: Context) -> dict:
    ten = _evaluate(ctx, "--ten-crop")
    centre = _evaluate(ctx, "--loader", "torch")  # the same decoding as ckpt-on-cpu's CPU evaluation
    with open(ctx.path("branches", "centre-eval.json"), "w") as f:
        json.dump(centre, f)
    if ten["images"] != centre["images"]:
        raise CheckFailed(f"ten-crop evaluated {ten['images']} images, centre crop {centre['images']}")
    return {"checkpoint": os.path.basename(ten["checkpoint"]), "ten_crop_rank1": ten["rank1"],
            "centre_rank1": centre["rank1"], "images": ten["images"]}


def ckpt_on_cpu(ctx: Context) -> dict:
    import torch
    ck, prefix = branch_checkpoint(ctx)
    path = sorted(glob.glob(os.path.join(ck, prefix + "-[0-9][0-9][0-9][0-9].pt")))[-1]
    places = set()
    torch.load(path, weights_only=True, map_location=lambda storage, where: places.add(where) or storage)
    result = _evaluate(ctx, "--loader", "torch", env={"CUDA_VISIBLE_DEVICES": ""})
    figures = {"saved_on": ",".join(sorted(places)), "cpu_rank1": result["rank1"], "images": result["images"]}
    if os.path.exists(ctx.path("branches", "centre-eval.json")):
        centre = json.loads(read(ctx.path("branches", "centre-eval.json")))
        figures.update(device_rank1=centre["rank1"], rank1_diff=abs(centre["rank1"] - result["rank1"]))
    if ctx.gpu and not any(p.startswith("cuda") for p in places):
        raise CheckFailed(f"{path} holds no GPU tensors (saved from {figures['saved_on']})", **figures)
    return figures
