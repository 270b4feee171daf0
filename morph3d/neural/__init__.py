"""Texture completion (classical and learned) and face super-resolution, at inference; their
training lives in `morph3d.neural.training`."""
