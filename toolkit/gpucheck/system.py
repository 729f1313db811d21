"""Check 1: nvidia-smi facts, torch sees the GPU, a one-process NCCL group (Gloo with --cpu)."""
import shutil
import subprocess
import time

from toolkit.gpucheck.common import CheckFailed, Context

SMI_FIELDS = "name,driver_version,memory.total,compute_cap,power.limit"


def _query(fields: str):
    out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20)
    return out.returncode, [[v.strip() for v in ln.split(",")] for ln in out.stdout.strip().splitlines()], \
        (out.stdout + out.stderr).strip()


def gpu_facts(ctx: Context) -> dict:
    if not shutil.which("nvidia-smi"):
        raise CheckFailed("nvidia-smi not found: no NVIDIA driver on this machine's PATH")
    rc, rows, text = _query(SMI_FIELDS)
    if rc != 0:  # an older driver without some field: the basic ones
        rc, rows, text = _query("name,driver_version,memory.total")
    if rc != 0 or not rows:
        raise CheckFailed(f"nvidia-smi exited {rc}: {text[:200]}")
    head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
    facts = dict(zip(["name", "driver", "memory", "compute_capability", "power_limit"], rows[0]))
    return {"gpus": len(rows), **facts,
            "driver_cuda": head.split("CUDA Version:")[1].split()[0] if "CUDA Version:" in head else "?"}


def torch_device(ctx: Context) -> dict:
    import torch
    figures = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if not ctx.gpu:
        x = torch.randn(256, 256)
        (x @ x).sum().item()
        return {**figures, "device": "cpu", "threads": torch.get_num_threads()}
    if not torch.cuda.is_available():
        try:
            head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
            driver = head.split("CUDA Version:")[1].split()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            driver = "unknown (no nvidia-smi)"
        raise CheckFailed(f"torch.cuda.is_available() is False: torch {torch.__version__} is built for CUDA "
                          f"{torch.version.cuda}, the driver supports CUDA {driver} (a driver that old needs "
                          "torch and DALI wheels built for its CUDA version)", **figures)
    device = torch.device("cuda", 0)
    x = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        y = x @ x
    torch.cuda.synchronize()
    tflops = 20 * 2 * 4096 ** 3 / (time.perf_counter() - t) / 1e12
    if not torch.isfinite(y.float()).all():
        raise CheckFailed("a bf16 matmul on the GPU gave non-finite values", **figures)
    return {**figures, "devices": torch.cuda.device_count(), "name": torch.cuda.get_device_name(device),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
            "cudnn": torch.backends.cudnn.version(), "bf16": torch.cuda.is_bf16_supported(),
            "bf16_matmul_tflops": round(tflops, 1)}


def process_group(ctx: Context) -> dict:
    import torch
    import torch.distributed as dist
    backend = "nccl" if ctx.gpu else "gloo"
    device = torch.device("cuda", 0) if ctx.gpu else torch.device("cpu")
    if ctx.gpu:
        torch.cuda.set_device(device)
    t = time.perf_counter()
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                            device_id=device if ctx.gpu else None)
    try:
        x = torch.arange(4, dtype=torch.float32, device=device)
        dist.all_reduce(x)
        dist.barrier()
        ok = x.tolist() == [0.0, 1.0, 2.0, 3.0]
    finally:
        dist.destroy_process_group()
    if not ok:
        raise CheckFailed(f"all_reduce over one {backend} process changed the tensor: {x.tolist()}")
    figures = {"backend": backend, "init_and_all_reduce_s": round(time.perf_counter() - t, 2)}
    if ctx.gpu:
        figures["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    return figures
