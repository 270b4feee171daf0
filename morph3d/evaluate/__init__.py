"""Scoring a swap against its original: per-face measures, clip metrics, the runner, plots."""
