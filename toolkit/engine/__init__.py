"""The training engine: configuration, LR schedule, DDP, checkpoints, stop signals, fit/evaluate."""
