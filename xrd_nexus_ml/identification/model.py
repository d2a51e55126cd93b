"""A trained identification model and its bundle: the mixture of experts plus what it knows.

Besides the network it carries the library it was built for (every reference phase with
formula, space group and its merged stick pattern, used to subtract an identified phase and
to draw sticks in plots), the expert plan (one expert per element), the calibration (a
softmax temperature fitted on held-out draws) and the open-set threshold (the 1 % quantile of
the cosine between in-library patterns' embeddings and their predicted class prototype).

Bundle: `<dir>/weights.safetensors` (tensors only) and `<dir>/card.json` (input grid,
classes, phases, experts, architecture, training recipe, metrics, versions). Loading reads
JSON and tensors, never pickles; a missing, corrupt or mismatched file raises
`ModelBundleError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xrd_nexus_ml.bundle import load_state, read_bundle, software_versions, write_bundle
from xrd_nexus_ml.errors import ModelBundleError
from xrd_nexus_ml.identification.library import (
    ExpertPlan,
    LibraryError,
    _check_elements,
    canonical_formula,
    formula_elements,
)
from xrd_nexus_ml.models import RegNetConfig, build_moe
from xrd_nexus_ml.models.moe import MixtureOfExperts
from xrd_nexus_ml.pattern import QGrid

KIND = "identification-moe"
CARD_VERSION = 1


@dataclass
class IdentificationModel:
    """The network and the library facts it needs at inference.

    phases: one dict per reference (name, formula, class_id, space_group_number,
    space_group_symbol, source). sticks: per reference (q in Å^-1, intensity with max 1)."""

    network: MixtureOfExperts
    classes: list[str]
    phases: list[dict]
    plan: ExpertPlan
    grid: QGrid
    architecture: dict
    sticks: list[tuple[np.ndarray, np.ndarray]]
    temperature: float = 1.0
    open_set_threshold: float = -1.0
    library_hash: str = ""
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    source: str = ""

    # -- what a user may restrict ------------------------------------------------------------
    def class_elements(self) -> list[frozenset[str]]:
        return [frozenset(formula_elements(c)) for c in self.classes]

    def restriction(self, elements=None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(allowed_experts, allowed_classes) for the elements a user says may be present.

        A class is a candidate when all its elements are given; an expert runs when it holds a
        candidate class. None: no restriction. No candidate class: LibraryError naming them."""
        if not elements:
            return None, None
        given = {str(e).strip() for e in elements if str(e).strip()}

        _check_elements(given)
        classes = torch.tensor([els <= given for els in self.class_elements()], dtype=torch.bool)
        if not bool(classes.any()):
            raise LibraryError(f"no phase of the model's library lies within the elements {','.join(sorted(given))}")
        return self.network.experts_for_classes(classes), classes

    @torch.inference_mode()
    def predict(self, inputs: torch.Tensor, allowed_experts=None, allowed_classes=None,
                batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (n, C) calibrated, similarity (n, C) cosine to each class prototype)."""
        if self.network.training:  # walking its ~6500 modules cost ~7 ms a call: only when needed
            self.network.eval()
        probs, sims = [], []
        for start in range(0, inputs.shape[0], batch_size):
            out = self.network(inputs[start:start + batch_size], allowed_experts, allowed_classes, self.temperature)
            probs.append(out.probs.numpy())
            sims.append(out.similarity.numpy())
        if not probs:
            c = len(self.classes)
            return np.zeros((0, c), np.float32), np.zeros((0, c), np.float32)
        return np.concatenate(probs), np.concatenate(sims)

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    # -- bundle ----------------------------------------------------------------------------
    def card(self) -> dict:
        return {
            "kind": KIND,
            "card_version": CARD_VERSION,
            "grid": self.grid.to_dict(),
            "input": "SNIP background removed (0.12 1/angstrom), max-normalised, square root; channel 2 = mask",
            "classes": self.classes,
            "phases": self.phases,
            "experts": self.plan.to_dict(),
            "architecture": self.architecture,
            "calibration": {"temperature": self.temperature, "open_set_threshold": self.open_set_threshold},
            "library_hash": self.library_hash,
            "n_parameters": self.n_parameters,
            "training": self.training,
            "metrics": self.metrics,
            "versions": software_versions(),
        }

    def save(self, directory) -> Path:
        """Write `<directory>/weights.safetensors` and `<directory>/card.json`; returns the folder."""
        tensors = {f"network.{k}": v for k, v in self.network.state_dict().items()}
        lengths = [len(q) for q, _ in self.sticks]
        tensors["sticks.offsets"] = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.long)
        tensors["sticks.q"] = torch.from_numpy(np.concatenate([q for q, _ in self.sticks]).astype(np.float32))
        tensors["sticks.intensity"] = torch.from_numpy(np.concatenate([i for _, i in self.sticks]).astype(np.float32))
        return write_bundle(directory, tensors, self.card())

    @classmethod
    def load(cls, directory) -> IdentificationModel:
        """Read a bundle written by `save`."""
        directory = Path(directory)
        card_path, weights_path = directory / "card.json", directory / "weights.safetensors"
        card, tensors = read_bundle(directory, (KIND,), CARD_VERSION)
        try:
            plan = ExpertPlan.from_dict(card["experts"])
            arch = card["architecture"]
            network = build_moe(plan.expert_classes, plan.expert_coarse, len(card["classes"]),
                                RegNetConfig.from_dict(arch["trunk"]), RegNetConfig.from_dict(arch["expert"]),
                                embedding_dim=int(arch["embedding_dim"]), k=int(arch["k"]),
                                gate_bins=int(arch["gate_bins"]), gate_hidden=int(arch["gate_hidden"]),
                                expert_bins=int(arch["expert_bins"]),
                                expert_bin_channels=int(arch["expert_bin_channels"]),
                                router=bool(arch.get("router", False)))
            load_state(network, tensors, "network", directory)
            network.gate.k = min(int(arch["inference_k"]), network.n_experts)
            offsets = tensors["sticks.offsets"].numpy()
            q, inten = tensors["sticks.q"].numpy(), tensors["sticks.intensity"].numpy()
            sticks = [(q[a:b], inten[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
            grid = card["grid"]
            model = cls(network=network.eval(), classes=list(card["classes"]), phases=list(card["phases"]), plan=plan,
                        grid=QGrid(float(grid["q_min"]), float(grid["q_max"]), int(grid["n_points"])),
                        architecture=arch, sticks=sticks,
                        temperature=float(card["calibration"]["temperature"]),
                        open_set_threshold=float(card["calibration"]["open_set_threshold"]),
                        library_hash=card.get("library_hash", ""), training=card.get("training", {}),
                        metrics=card.get("metrics", {}), source=str(directory))
        except ModelBundleError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, LibraryError) as err:
            raise ModelBundleError(f"{card_path}: incomplete or inconsistent model card ({err!r})") from None
        if len(sticks) != len(model.phases):
            raise ModelBundleError(f"{weights_path}: {len(sticks)} stick patterns for {len(model.phases)} phases")
        return model


def phase_record(phase, class_id: int) -> dict:
    """The card entry of a `ReferencePhase`."""
    return {"name": phase.name, "formula": canonical_formula(phase.formula), "class_id": int(class_id),
            "space_group_number": int(phase.space_group_number), "space_group_symbol": phase.space_group_symbol,
            "source": phase.source}
