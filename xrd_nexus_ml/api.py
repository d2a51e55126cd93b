"""The front door: the few calls a user needs, each by name, without knowing the package's layout.

    import xrd_nexus_ml as xnm
    pattern = xnm.read_pattern("sample.xy", wavelength="CuKa1")   # the file's own wavelength wins
    xnm.identify(pattern)                  # phases, or out of library
    xnm.classify_space_group(pattern)      # space group, crystal system, with probabilities
    model = xnm.load_model("spacegroup/default")

Models are named as `available_models()` lists them ("identification/default", ...) or given as
a bundle folder. Loaded models are kept, so repeated calls do not reload them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from xrd_nexus_ml.bundle import CARD_FILE, resolve_bundle, shipped_models
from xrd_nexus_ml.classify import read_pattern_file_first
from xrd_nexus_ml.device import resolve_device
from xrd_nexus_ml.errors import ModelBundleError, WavelengthError
from xrd_nexus_ml.identification.identifier import Identifier
from xrd_nexus_ml.identification.model import KIND as IDENTIFICATION_KIND
from xrd_nexus_ml.io import read_structure
from xrd_nexus_ml.pattern import Diffractogram
from xrd_nexus_ml.physics import PowderSimulator, RenderGrid
from xrd_nexus_ml.spacegroup.model import KIND as SPACEGROUP_KIND
from xrd_nexus_ml.spacegroup.model import UNDETERMINED, SpaceGroupModel, predict_patterns
from xrd_nexus_ml.spacegroup.model import load_model as load_spacegroup_model
from xrd_nexus_ml.transitions.models import MODELS as TRANSITION_KINDS
from xrd_nexus_ml.transitions.models import load_model as load_transition_model


def available_models() -> list[str]:
    """The names of the models shipped with the package, e.g. "identification/default"."""
    return shipped_models()


def load_model(name_or_path: str | Path, device: str = "auto"):
    """A ready model from a registry name or a bundle folder: an `Identifier` (material
    identification), a `SpaceGroupModel`, or a phase-transition classifier; the card says which."""
    folder = resolve_bundle(name_or_path)
    return _load(str(folder.resolve()), str(resolve_device(device)))


@functools.lru_cache(maxsize=8)
def _load(folder: str, device: str):
    card = Path(folder) / CARD_FILE
    try:
        kind = json.loads(card.read_text()).get("kind")
    except (OSError, ValueError) as err:
        raise ModelBundleError(f"{card}: not a readable model card ({err})") from None
    if kind == IDENTIFICATION_KIND:
        return Identifier.from_bundle(folder)
    if kind == SPACEGROUP_KIND:
        return load_spacegroup_model(folder, device)
    if kind in TRANSITION_KINDS:
        return load_transition_model(folder)
    raise ModelBundleError(f"{card}: unknown model kind {kind!r}")


def read_pattern(path, wavelength=None) -> Diffractogram:
    """A pattern file (.xy, .xye, .xrdml, .npy, NeXus, ...). `wavelength` (Å or an anode name such as
    "CuKa1") serves only a file that records none; a file's own recorded wavelength is kept."""
    return read_pattern_file_first(path, wavelength)


def _pattern(pattern_or_path, wavelength=None) -> Diffractogram:
    pattern = pattern_or_path if isinstance(pattern_or_path, Diffractogram) else read_pattern(pattern_or_path,
                                                                                              wavelength)
    if pattern.axis != "q" and not pattern.wavelength:
        raise WavelengthError("the axis is 2θ and no wavelength is known; pass wavelength= (Å or e.g. 'CuKa1')",
                              pattern.source)
    return pattern


def identify(pattern_or_path, model: str | Path = "identification/default", elements=None,
             max_phases: int = 3, wavelength=None) -> dict:
    """The phases of one pattern: {"phases": [{"formula", "probability", "reference", ...}, ...],
    "out_of_library": bool, "candidates", "explained", ...}. `out_of_library` True means what is
    seen is not (all) in the model's library: the phases listed then explain only part of it.
    elements: those that may be present (e.g. ["Li", "Mn", "O"]), restricting the answer."""
    identifier = load_model(model)
    if not isinstance(identifier, Identifier):
        raise ModelBundleError(f"{model}: not a material-identification model")
    pattern = _pattern(pattern_or_path, wavelength)
    if max_phases != identifier.max_phases:
        identifier = Identifier(identifier.model, max_phases=max_phases)
    result = identifier.identify([pattern], elements=elements, sources=[pattern.source or ""])[0]
    return result.to_dict()


def classify_space_group(pattern_or_path, model: str | Path = "spacegroup/default", top_k: int = 5,
                         wavelength=None) -> dict:
    """The space-group model's answer for one pattern: {"space_group" (number), "symbol",
    "probability", "crystal_system", "extinction_group", "crystalline", "top_k": [{"number", "symbol",
    "probability"}, ...]}. A head whose probability is below the model's answer threshold says
    "undetermined" (symbol None); `top_k` still ranks the candidates with their probabilities."""
    network = load_model(model)
    if not isinstance(network, SpaceGroupModel):
        raise ModelBundleError(f"{model}: not a space-group model")
    prediction = predict_patterns([_pattern(pattern_or_path, wavelength)], network, top_k=top_k)[0]
    sg, ext, system = prediction.space_group, prediction.extinction_group, prediction.crystal_system
    return {"space_group": sg[0] if sg else UNDETERMINED, "symbol": sg[1] if sg else None,
            "probability": round(prediction.space_groups[0][2], 4),
            "crystal_system": system[0] if system else UNDETERMINED,
            "extinction_group": ext[1] if ext else UNDETERMINED, "crystalline": prediction.crystalline,
            "top_k": prediction.to_dict()["space_group"]}


def simulate(cif_or_structure, wavelength="CuKa1", two_theta=None) -> Diffractogram:
    """The powder pattern of a CIF file or a pymatgen Structure, max-normalised: on a 2θ grid
    (start, stop, step in degrees) or, without `two_theta`, on the models' canonical q grid."""
    structure = read_structure(cif_or_structure) if isinstance(cif_or_structure, (str, Path)) else cif_or_structure
    kwargs = {"grid": RenderGrid.two_theta(*two_theta)} if two_theta is not None else {}
    return PowderSimulator(wavelength=wavelength, device="cpu", **kwargs).diffractogram(structure)
