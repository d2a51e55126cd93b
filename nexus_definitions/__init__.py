"""Proposed NeXus application definition NXxrd_ml for ML-classified powder diffraction, writers and checks.

* ``NXxrd_ml.nxdl.xml``: the definition (extends NXxrd, hence NXmonopd); `NXDL_PATH`.
* `layout`: the file layout in one place (paths, units, fill values) used by everything below.
* `NexusRunFile`: low-level writer of one run, frame by frame, SWMR-safe; `append_predictions`
  adds a prediction process to any existing NeXus file; `clear_consistency_flags` marks a file
  whose writer died as closed.
* `read_patterns`: every frame of a NeXus file as `Diffractogram`s with pressures and energies.
* `validate_file`: structure/units check, nexusformat and pynxtools against the definition.
* `export_record`: the SciCat dataset record of a file, checked against ``scicat_dataset.schema.json``.

The Bluesky callback that feeds `NexusRunFile` is `bluesky_callbacks.nexus_writer.NexusWriter`.
"""

from nexus_definitions.export import ExportError, export_record, validate_record
from nexus_definitions.layout import DEFINITION_NAME, DEFINITION_VERSION, NXDL_PATH, NexusLayoutError
from nexus_definitions.reader import read_patterns
from nexus_definitions.validate import (
    NexusValidationError,
    ValidationReport,
    check_nxdl_schema,
    validate_file,
)
from nexus_definitions.writer import (
    ExternalFrames,
    NexusFileExistsError,
    NexusRunFile,
    NexusWriteError,
    RunMetadata,
    append_predictions,
    clear_consistency_flags,
)

__all__ = [
    "DEFINITION_NAME",
    "DEFINITION_VERSION",
    "NXDL_PATH",
    "ExportError",
    "ExternalFrames",
    "NexusFileExistsError",
    "NexusLayoutError",
    "NexusRunFile",
    "NexusValidationError",
    "NexusWriteError",
    "RunMetadata",
    "ValidationReport",
    "append_predictions",
    "check_nxdl_schema",
    "clear_consistency_flags",
    "export_record",
    "read_patterns",
    "validate_file",
    "validate_record",
]
