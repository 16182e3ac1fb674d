"""Measuring results.

``metrics``: scores against ground truth; ``fid``: FID/KID between image sets; ``sweep``:
per-layer sweeps of adaptation runs.
"""
