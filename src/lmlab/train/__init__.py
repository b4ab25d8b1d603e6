"""The training loop and its parts: precision, optimizer, schedule, checkpoints."""
