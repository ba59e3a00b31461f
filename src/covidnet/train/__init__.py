"""Training: data, the step plan, the epoch loop, checkpoints, DDP, outputs, launchers."""
