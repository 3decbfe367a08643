"""The training loop, optimizers and schedules."""
