"""Training: data, trainer, checkpoints, evaluation."""
