"""cnn-toolkit: train the classic ImageNet CNNs with PyTorch on MXNet-compatible data and logs."""
import os

# PyTorch's own switch: CPU tensors of 2 MB and more come from transparent huge pages. A fresh
# batch of 64 x 3 x 224 x 224 floats otherwise costs ~9,400 page faults (about as long as
# normalising it); measured by tools/benchmark.py loader. Set THP_MEM_ALLOC_ENABLE=0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
