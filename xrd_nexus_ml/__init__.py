"""xrd-nexus-ml: ML identification of powder diffraction patterns, live in Bluesky scans, with NeXus output.

The front door (`xrd_nexus_ml.api`): `available_models`, `load_model`, `read_pattern`, `identify`,
`classify_space_group`, `simulate`. Its names load on first use (PEP 562), so that importing
any part of the package does not pay for the models.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"


_FRONT_DOOR = {
    "available_models": "xrd_nexus_ml.api",
    "load_model": "xrd_nexus_ml.api",
    "read_pattern": "xrd_nexus_ml.api",
    "identify": "xrd_nexus_ml.api",
    "classify_space_group": "xrd_nexus_ml.api",
    "simulate": "xrd_nexus_ml.api",
    "CANONICAL_GRID": "xrd_nexus_ml.pattern",
    "Diffractogram": "xrd_nexus_ml.pattern",
    "QGrid": "xrd_nexus_ml.pattern",
}
__all__ = [*_FRONT_DOOR, "__version__"]


def __getattr__(name: str):
    module = _FRONT_DOOR.get(name)
    if module is None:
        raise AttributeError(f"module 'xrd_nexus_ml' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
