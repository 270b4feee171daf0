"""Compositing a rendered face into the actor's frame: masks, colour, occluders, eyes and
mouth, the blend, and the per-clip compositor (see compositor.py for the steps)."""
