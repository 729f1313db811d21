"""`tools/gpu_check.sh` / `tools/benchmark.py gpu`: every GPU path of the project run once, each check
in its own process with its own time limit, one line per check and a JSON summary.

    runner.py    runs the checks in order (a child process each, killed with all it started when its
                 limit or the overall budget runs out), prints the lines, rewrites the JSON after each
    system.py    nvidia-smi facts, torch sees the GPU, a one-process NCCL (Gloo with --cpu) group
    workflow.py  the quickstart (tools/quickstart.sh) on the GPU, stop-and-resume bit-exactness, the
                 engine's fp16 + loss scaler + gradient accumulation, ten-crop, a GPU checkpoint on CPU
    speed.py     throughput ratios from tools/benchmark.py train / loader in the same run

A check runs as `python -m toolkit.gpucheck NAME CONTEXT_JSON` and prints its result as the last line
`GPUCHECK_RESULT {"status": "ok"|"FAIL"|"SKIP", "reason": ..., "figures": {...}}`.
"""
