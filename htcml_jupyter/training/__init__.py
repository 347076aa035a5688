"""Throughput training: sweeps over grids and random spaces, and early-abort policies."""
