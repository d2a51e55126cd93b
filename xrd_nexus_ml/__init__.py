"""xrd-nexus-ml: ML identification of powder diffraction patterns, live in Bluesky scans, with NeXus output."""

from xrd_nexus_ml.pattern import CANONICAL_GRID, Diffractogram, QGrid

__version__ = "0.1.0"
__all__ = ["CANONICAL_GRID", "Diffractogram", "QGrid", "__version__"]
