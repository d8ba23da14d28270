"""Training: objectives, timestep sampling, the loop, checkpoints, validation, metrics."""
