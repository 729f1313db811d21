"""Check 3: throughput as ratios against baselines measured in the same run, by the repository's own
benchmarks (tools/benchmark.py train: engine step vs a bare PyTorch loop; tools/benchmark.py loader:
our DALI loader vs DALI's own pipeline on the same shards)."""
from toolkit.gpucheck.common import Context, json_last_line, python, run


def _benchmark(ctx: Context, *args) -> dict:
    proc = run(ctx, python() + ["tools/benchmark.py", *args, "--json"], what=f"tools/benchmark.py {args[0]}")
    return json_last_line(proc.stdout)


def train_step(ctx: Context, compile: bool = False) -> dict:
    s = ctx.sizes
    args = ["train", "--recipe", s["train_recipe"], "--batch-size", str(s["train_batch"]), "--image-size",
            str(s["train_size"]), "--steps", str(s["train_steps"]), "--rounds", str(s["train_rounds"]),
            "--amp", "bf16", "--channels-last"]
    if float(s["train_width"]) != 1.0:
        args += ["--width", str(s["train_width"])]
    r = _benchmark(ctx, *args, *(["--compile"] if compile else []))
    return {"recipe": s["train_recipe"], "batch": s["train_batch"], "engine_img_s": r["engine_images_per_sec"],
            "bare_img_s": r["bare_images_per_sec"], "engine_vs_bare": r["ratio_engine_vs_bare"], "device": r["device"]}


def train_step_compile(ctx: Context):
    if not ctx.gpu and not ctx.sizes["compile_on_cpu"]:
        return ("SKIP", "--cpu: inductor's C++ build takes minutes on a small CPU; --set compile_on_cpu=1 runs it")
    return train_step(ctx, compile=True)


def loader(ctx: Context) -> dict:
    s = ctx.sizes
    r = _benchmark(ctx, "loader", "--backend", "dali", "--device", "cuda" if ctx.gpu else "cpu",
                   "--without", "b", "--without", "c", "--images", str(s["loader_images"]),
                   "--batch-size", str(s["loader_batch"]), "--image-size", str(s["loader_size"]),
                   "--workers", str(s["loader_workers"]), "--seconds", str(s["loader_seconds"]), "--rounds", "2",
                   "--cache", ctx.path("bench-data"))
    return {"decode": "mixed" if ctx.gpu else "cpu", "loader_img_s": r["dali_per_sec"],
            "dali_pipeline_img_s": r["a_dali_pipeline_per_sec"], "loader_vs_pipeline": r["ratio_dali_vs_a"]}
