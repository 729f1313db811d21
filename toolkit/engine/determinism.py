"""`--deterministic`: the kernels torch has in a deterministic form, for a GPU run that must end
bit-identical across a stop and resume (or between two runs). On the CPU every kernel the engine uses
already is; on GPUs cuDNN may pick non-deterministic convolution algorithms and some backward kernels
(e.g. adaptive average pooling) add with atomics. tools/gpu_check.sh measures whether it is needed.
"""
import os

import torch

WORKSPACE = ":4096:8"  # cuBLAS's deterministic workspace setting (read when its first handle is made)


def apply(enabled: bool):
    """Before any GPU work: deterministic cuDNN algorithms, no autotuning, torch's deterministic
    implementations where there is one (an op without one warns once, naming itself: warn_only, so a
    run is never stopped by it) and cuBLAS's fixed workspace."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", WORKSPACE)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
