"""Exceptions a user can cause, each naming the file or key and what was expected."""

from __future__ import annotations

import errno


class XrdNexusMlError(Exception):
    """Base class of every error this package raises on purpose."""


class PatternError(XrdNexusMlError, ValueError):
    """A diffraction pattern (in memory or in a file) is not usable as given."""

    def __init__(self, problem: str, source: str | None = None):
        self.problem = problem
        self.source = source
        super().__init__(f"{source}: {problem}" if source else problem)


class PatternFileError(PatternError):
    """A pattern or structure file cannot be read: wrong format, no data, bad numbers."""


class WavelengthError(PatternError):
    """A wavelength is missing where one is needed, or is not a positive number."""


class StructureError(XrdNexusMlError, ValueError):
    """A crystal structure cannot be simulated (unknown element, empty cell, bad lattice)."""


class PatternFileNotFoundError(PatternFileError, FileNotFoundError):
    """A pattern file does not exist; caught by `except FileNotFoundError` as well."""

    def __init__(self, problem: str, source: str | None = None):
        super().__init__(problem, source)
        self.errno = errno.ENOENT


class StructureFileNotFoundError(StructureError, FileNotFoundError):
    """A structure file does not exist; caught by `except FileNotFoundError` as well."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOENT


class ModelBundleError(XrdNexusMlError, ValueError):
    """A model bundle (weights + card) is missing, corrupt or of another kind; names the file."""
