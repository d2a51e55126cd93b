"""The optional models of the live classifier: space group and material identification.

The phase model (low/high-pressure phase and the transition estimate) is the engine's core.
These run beside it on the same batch, each turning the batch's frames, prepared its way,
into some fields of each frame's `FramePrediction`. The engine keeps them apart so that one
failing leaves the others' fields intact (see `RunClassifier.classify`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from xrd_nexus_ml.identification.library import LibraryError
from xrd_nexus_ml.pattern import QGrid
from xrd_nexus_ml.preprocess.background import model_input
from xrd_nexus_ml.preprocess.frames import SNIP_WIDTH_Q, PreparedFrames
from xrd_nexus_ml.spacegroup.model import UNDETERMINED


@dataclass
class SpaceGroupStage:
    """Space group, its probability and the crystal system of each usable frame.

    The network reads the pattern with its background (it was trained that way), so the frames
    are prepared without SNIP. A frame the model does not find crystalline (flat, noise, an
    amorphous hump) gets no space group: number 0, probability NaN, crystal system "". Where the
    model is below its answer threshold for a head, that head says so: space group number 0 with
    probability NaN, crystal system "undetermined" (`SpaceGroupPrediction.answer`)."""

    model: object  # xrd_nexus_ml.spacegroup.model.SpaceGroupModel
    task: str = "space_group"
    snip_width_q = None  # keep the background

    @property
    def grid(self) -> QGrid:
        return self.model.grid

    def check_elements(self, elements: Sequence[str] | None) -> str | None:
        return None  # the space group does not depend on the chemistry

    def fields(self, prepared: PreparedFrames, elements=None) -> list[dict]:
        out: list[dict] = [{} for _ in range(len(prepared))]
        rows = np.flatnonzero(prepared.ok)
        if not rows.size:
            return out
        probs = self.model.probabilities(torch.from_numpy(model_input(prepared.x[rows], prepared.mask[rows])))
        for row, prediction in zip(rows, self.model.predictions(probs, top_k=1)):
            if prediction.crystalline:
                space_group, system = prediction.space_group, prediction.crystal_system
                out[row] = {"space_group_number": space_group[0] if space_group else 0,
                            "space_group_probability": space_group[2] if space_group else math.nan,
                            "crystal_system": system[0] if system else UNDETERMINED}
        return out


@dataclass
class IdentificationStage:
    """The phases of each usable frame, by the identification model's `Identifier`.

    elements (per run, from `RunClassifier`): the elements that may be present. When no class
    of the library lies within them, nothing can be named: every frame is out of library."""

    identifier: object  # xrd_nexus_ml.identification.identifier.Identifier
    task: str = "material_identification"
    snip_width_q = SNIP_WIDTH_Q  # as in training (the card's "input")

    @property
    def grid(self) -> QGrid:
        return self.identifier.model.grid

    def check_elements(self, elements: Sequence[str] | None) -> str | None:
        """None when the library holds a class within `elements`, else why not (logged once per run)."""
        try:
            self.identifier.model.restriction(elements)
        except LibraryError as err:
            return str(err)
        return None

    def fields(self, prepared: PreparedFrames, elements=None) -> list[dict]:
        out: list[dict] = [{} for _ in range(len(prepared))]
        if not prepared.ok.any():
            return out
        try:  # identify checks the elements first (`restriction`), before any work
            results = self.identifier.identify(prepared, elements=elements, sources=[""] * len(prepared))
        except LibraryError:  # no class within the elements (warned when the run started)
            return [{"material_out_of_library": True} if ok else {} for ok in prepared.ok]
        for i, result in enumerate(results):
            if result.flag is None:
                out[i] = {"material": "+".join(result.formulas),
                          "material_probability": result.phases[0].probability if result.phases else math.nan,
                          "material_out_of_library": bool(result.out_of_library)}
        return out
