"""cnn-toolkit: train the classic ImageNet CNNs with PyTorch on MXNet-compatible data and logs."""

__version__ = "0.1.0"
