"""File input: measured patterns (text, XRDML, .npy, NeXus/HDF5) and crystal structures (CIF).

`read_pattern` picks the reader from the file suffix; the individual readers are public for
callers who know the format or need its options (e.g. `read_nexus(entry=...)`). `base` holds
what every reader shares, `nexus` the NeXus rules (also used by `nexus_definitions.reader`).
"""

from xrd_nexus_ml.errors import PatternFileNotFoundError, StructureFileNotFoundError
from xrd_nexus_ml.io.readers import (
    SUPPORTED_SUFFIXES,
    read_nexus,
    read_npy,
    read_pattern,
    read_structure,
    read_xrdml,
    read_xy,
)

__all__ = [
    "SUPPORTED_SUFFIXES",
    "PatternFileNotFoundError",
    "StructureFileNotFoundError",
    "read_nexus",
    "read_npy",
    "read_pattern",
    "read_structure",
    "read_xrdml",
    "read_xy",
]
