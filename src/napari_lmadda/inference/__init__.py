"""Prediction of virtual stains.

``predict``: tiled numpy prediction; ``predict_dask``: the same as a dask graph for folders,
large images and clusters; ``uncertainty``: trust maps from test-time variation.
"""
