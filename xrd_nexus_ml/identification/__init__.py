"""Material identification by element experts: reference libraries, class labels, truth and scores."""

from xrd_nexus_ml.identification.library import (
    DEFAULT_EXCLUDED,
    ExpertPlan,
    LibraryError,
    PhaseLibrary,
    ReferencePhase,
    canonical_formula,
    chemical_system,
    default_library,
    formula_from_name,
    library_from_structures,
    load_cif_library,
    name_mismatches,
    split_by_structure,
)
from xrd_nexus_ml.identification.truth import PatternScore, labels_from_filename, read_truth, score

__all__ = [
    "DEFAULT_EXCLUDED",
    "ExpertPlan",
    "LibraryError",
    "PatternScore",
    "PhaseLibrary",
    "ReferencePhase",
    "canonical_formula",
    "chemical_system",
    "default_library",
    "formula_from_name",
    "labels_from_filename",
    "library_from_structures",
    "load_cif_library",
    "name_mismatches",
    "read_truth",
    "score",
    "split_by_structure",
]
