"""Proposed NeXus application definition(s) for ML-classified powder diffraction, writers and checks."""
