"""napari dock widgets (thin layers over the Qt-free core)."""
