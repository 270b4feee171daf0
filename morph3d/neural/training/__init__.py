"""Training of the learned nets (completion, super-resolution) and what they share."""
