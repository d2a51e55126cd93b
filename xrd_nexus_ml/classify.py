"""Pattern files classified with the shipped or a given model: phases (identification) and,
beside them, the space-group model's answer. What `classify FILE...` and the front door's
`identify` run; the file's own recorded wavelength wins over a fallback one."""

from __future__ import annotations

from pathlib import Path

from xrd_nexus_ml.bundle import resolve_bundle
from xrd_nexus_ml.errors import WavelengthError, XrdNexusMlError
from xrd_nexus_ml.identification.identifier import Identifier
from xrd_nexus_ml.io import read_pattern
from xrd_nexus_ml.spacegroup.model import load_model as load_spacegroup_model
from xrd_nexus_ml.spacegroup.model import predict_patterns


def read_pattern_file_first(path, wavelength=None):
    """A pattern file read with its own recorded wavelength; `wavelength` (Å or an anode name) serves
    only a file that records none (or an unusable one). A q axis needs none. (`read_pattern(path,
    wavelength=...)` would put the argument above the file's value.)"""
    if wavelength is None:
        return read_pattern(path)
    try:
        pattern = read_pattern(path)
    except WavelengthError:  # the file states a wavelength that is no wavelength: the argument serves
        return read_pattern(path, wavelength=wavelength)
    if pattern.axis == "q" or pattern.wavelength:
        return pattern
    return read_pattern(path, wavelength=wavelength)


def classify_patterns(files, model: str | None = None, elements=None, wavelength=None, max_phases: int = 3,
                      plot_dir: str | None = None, spacegroup_model: str | None = "default",
                      max_strain: float | None = None, errors: str = "raise") -> list[dict]:
    """Identify the phases of pattern files; one dict per file, in order (see `Identification.to_dict`,
    plus the wavelength used and where it came from), with the space-group model's answer under
    "symmetry" unless `spacegroup_model` is None.

    wavelength: for files that record none (`read_pattern_file_first`); a 2θ file with neither is
    a file error. errors: "raise" (the first file that cannot be read or used raises) or "record"
    (its dict is {"file": ..., "error": ...} and the other files are still identified).
    max_strain: see `Identifier` (None: its default)."""
    if errors not in ("raise", "record"):
        raise ValueError(f"errors must be 'raise' or 'record', got {errors!r}")
    strain = {} if max_strain is None else {"max_strain": max_strain}
    identifier = Identifier.from_bundle(resolve_bundle(model, task="identification"), max_phases=max_phases, **strain)
    out: list[dict | None] = [None] * len(files)
    patterns, rows = [], []
    for i, f in enumerate(files):
        try:
            pattern = read_pattern_file_first(f, wavelength)
            if pattern.axis != "q" and not pattern.wavelength:
                raise WavelengthError("the axis is 2θ and the file records no wavelength; give --wavelength (Å, or "
                                      "an anode name such as CuKa1)", str(f))
        except (XrdNexusMlError, OSError) as err:
            if errors == "raise":
                raise
            out[i] = {"file": str(f), "error": getattr(err, "problem", None) or str(err)}
            continue
        patterns.append(pattern)
        rows.append(i)
    if not patterns:
        return out
    results = identifier.identify(patterns, elements=elements, sources=[str(files[i]) for i in rows])
    symmetry = [None] * len(patterns)
    if spacegroup_model is not None:
        symmetry = predict_patterns(patterns, load_spacegroup_model(spacegroup_model))
    for row, pattern, result, sym in zip(rows, patterns, results, symmetry):
        record = result.to_dict()
        record["wavelength_angstrom"] = pattern.wavelength
        record["wavelength_origin"] = pattern.metadata.get("wavelength_origin")
        if sym is not None:
            record["symmetry"] = sym.to_dict()
        if plot_dir is not None and result.flag is None:
            from xrd_nexus_ml.plotting import plot_identification  # optional: matplotlib, the [plot] extra

            record["png"] = str(plot_identification(pattern, result, identifier.model, Path(plot_dir)))
        out[row] = record
    return out
