"""One check in this process: `python -m toolkit.gpucheck NAME CONTEXT_JSON` (started by runner.py)."""
import sys
import traceback

from toolkit.gpucheck import agree, speed, system, workflow
from toolkit.gpucheck.common import CheckFailed, Context, report

FUNCTIONS = {
    "gpu-facts": system.gpu_facts, "torch-device": system.torch_device, "process-group": system.process_group,
    "quickstart": workflow.quickstart, "resume-exact": workflow.resume_exact, "fp16-accum": workflow.fp16_accum,
    "loaders-agree": agree.loaders_agree, "ten-crop": workflow.ten_crop, "ckpt-on-cpu": workflow.ckpt_on_cpu,
    "train-step": speed.train_step, "loader": speed.loader, "train-step-compile": speed.train_step_compile,
}


def main(name: str, context: str) -> int:
    ctx = Context.from_json(context)
    try:
        figures = FUNCTIONS[name](ctx)
    except CheckFailed as exc:
        report("FAIL", exc.reason, **exc.figures)
        return 1
    except Exception as exc:  # the check's own bug or an unexpected library error: its last line
        traceback.print_exc()
        report("FAIL", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}")
        return 1
    if isinstance(figures, tuple):  # ("SKIP", reason)
        report(figures[0], figures[1])
    else:
        report("ok", "", **figures)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
