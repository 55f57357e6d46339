"""Training engine: device selection, checkpoints, the training loop."""
