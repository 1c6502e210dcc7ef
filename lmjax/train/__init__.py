"""Training: state, optimizer, steps, checkpoints, metrics and the loop."""
