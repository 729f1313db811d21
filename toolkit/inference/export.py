"""tools/export.py: a checkpoint's eval-mode network as ONNX or a torch.export ExportedProgram, with a
dynamic batch dimension, a JSON beside it (preprocessing, class names), and a parity check.

Both come from one torch.export graph: `exported-program` saves it (torch.export.save, a .pt2 for
torch.export.load, AOTInductor, ExecuTorch); `onnx` translates it with torch's dynamo-based ONNX
exporter (onnxscript). Before a file gets its name, the exported model runs on a batch of
preprocessed-like inputs (onnxruntime for ONNX, the loaded program otherwise) at batch sizes other
than the one traced, and is compared with PyTorch; beyond the tolerance nothing is written. The
input is the normalised NCHW float32 batch: decoding, resizing and (x - mean) / std stay outside
the model, described in the JSON. GoogLeNet's auxiliary heads run only in training mode, so the
eval-mode graph has none.
"""
import contextlib
import copy
import importlib.util
import io
import json
import os
import time

import torch

from toolkit.atomic import atomic_open, atomic_path
from toolkit.errors import UserError

FORMATS = {"onnx": ".onnx", "exported-program": ".pt2"}
CHECK_BATCHES = (1, 3)  # other than the traced batch of 2: the batch dimension is really dynamic


def sample_batch(meta: dict, n: int, seed: int = 0) -> torch.Tensor:
    """Random images, normalised as the loader normalises (so values are in the range real ones take)."""
    g = torch.Generator().manual_seed(seed)
    size = meta["image_size"]
    x = torch.randint(0, 256, (n, 3, size, size), generator=g).float()
    mean, std = (torch.tensor(meta[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    return (x - mean) / std


def trace(model, meta: dict):
    batch = torch.export.Dim("batch", min=1, max=65536)
    return torch.export.export(model, (sample_batch(meta, 2),), dynamic_shapes=({0: batch},))


def _quiet():
    """torch.onnx prints its progress on stdout; the tool prints its own summary."""
    return contextlib.redirect_stdout(io.StringIO())


def write_onnx(program, path: str):
    with _quiet():
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=["input"], output_names=["logits"],
                                         verbose=False)
        onnx_program.save(path)
    import onnx
    model = onnx.load(path)
    for value in (model.graph.input[0], model.graph.output[0]):  # the exporter names it s0, s77, ...
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(model, path)


def run_onnx(path: str, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def run_program(path: str, x: torch.Tensor) -> torch.Tensor:
    with open(path, "rb") as f, torch.no_grad():  # a file object: the temp name does not end in .pt2
        return torch.export.load(f).module()(x)


def parity(model, meta, fmt: str, path: str) -> dict:
    """Largest |exported - PyTorch| over the check batches, on the logits and on the softmax."""
    run = run_onnx if fmt == "onnx" else run_program
    logit_err = prob_err = 0.0
    scale = 0.0
    for k, n in enumerate(CHECK_BATCHES):
        x = sample_batch(meta, n, seed=1 + k)
        with torch.no_grad():
            ref = model(x).float()
        out = run(path, x).float()
        if out.shape != ref.shape:
            raise UserError(f"{fmt} export gave outputs of shape {tuple(out.shape)} for a batch of {n}, "
                            f"PyTorch {tuple(ref.shape)}: not written")
        logit_err = max(logit_err, (out - ref).abs().max().item())
        prob_err = max(prob_err, (out.softmax(1) - ref.softmax(1)).abs().max().item())
        scale = max(scale, ref.abs().max().item())
    return {"max_abs_logit_error": logit_err, "max_abs_prob_error": prob_err, "max_abs_logit": scale}


def sidecar(member, fmt: str, path: str, check: dict) -> dict:
    meta = member.meta
    return {"format": fmt, "file": os.path.basename(path), "checkpoint": member.path, "recipe": meta["recipe"],
            "input": {"name": "input", "layout": "NCHW", "dtype": "float32", "channels": "RGB",
                      "shape": ["batch", 3, meta["image_size"], meta["image_size"]]},
            "output": {"name": "logits", "shape": ["batch", meta["num_classes"]],
                       "meaning": "class scores; softmax gives probabilities"},
            "preprocessing": {"resize_shorter_side": meta["eval_resize"], "center_crop": meta["image_size"],
                              "interpolation": "bilinear, antialiased", "mean": meta["mean"], "std": meta["std"],
                              "scale": "mean/std on 0-255 pixel values", "text": meta["preprocessing"]},
            "class_names": meta["class_names"], "parity": check, "torch": torch.__version__}


def without_aux_heads(model):
    """A copy without GoogLeNet's auxiliary heads: they run only in training, but torch.export would
    still carry their weights."""
    if isinstance(getattr(model, "aux", None), torch.nn.ModuleList) and len(model.aux):
        model = copy.deepcopy(model)
        model.aux, model.aux_at = torch.nn.ModuleList(), {}
    return model


def require_onnx():
    """ONNX export is optional (setup.py extra `export`): one line when its packages are missing."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}: pip install -e '.[export]' "
                        "(or pip install onnx onnxscript onnxruntime)")


def export(member, fmt: str, out: str, atol: float = 1e-3, rtol: float = 1e-3) -> dict:
    """Write `out` (and `out`.json) for one checkpoint, or raise UserError when the check fails."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: valid: {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    model = without_aux_heads(member.model.cpu().float().eval())
    t0 = time.perf_counter()
    program = trace(model, member.meta)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with atomic_path(out) as tmp:  # renamed to `out` only when the check passes
        if fmt == "onnx":
            write_onnx(program, tmp)
        else:
            with open(tmp, "wb") as f:
                torch.export.save(program, f)
        check = parity(model, member.meta, fmt, tmp)
        limit = atol + rtol * check["max_abs_logit"]
        if not check["max_abs_logit_error"] <= limit:
            raise UserError(f"{out}: the {fmt} export's logits differ from PyTorch's by "
                            f"{check['max_abs_logit_error']:.3g} (limit {limit:.3g}); not written "
                            "(--atol/--rtol to accept it)")
    info = sidecar(member, fmt, out, {**check, "atol": atol, "rtol": rtol, "batches": list(CHECK_BATCHES)})
    with atomic_open(out + ".json", "w") as f:
        json.dump(info, f, indent=1)
    return {**check, "bytes": os.path.getsize(out), "seconds": time.perf_counter() - t0, "json": out + ".json"}


def default_out(member, fmt: str, out_dir: str = "exports") -> str:
    return os.path.join(out_dir, os.path.splitext(os.path.basename(member.path))[0] + FORMATS[fmt])
