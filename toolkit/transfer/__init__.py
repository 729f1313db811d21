"""Transfer learning: weights from our checkpoints or torchvision's files (`weights`, `keymaps`),
a frozen body and a faster head while fine-tuning (`freeze`), and features at any layer for a
linear classifier (`features`, `linear`)."""
