"""Training: the IGPO trainer loop, checkpoints, and per-step invariant checks."""
