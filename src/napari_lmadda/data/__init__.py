"""Data: image I/O, normalisation, lazy datasets with patch sampling, synthetic microscopy."""
