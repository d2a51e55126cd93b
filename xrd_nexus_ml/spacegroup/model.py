"""A trained space-group classifier and its bundle: the ResNet plus its calibration.

Input: the pattern on the model's q grid, √ of the max-normalised intensity, and the mask (no
background subtraction: the network was trained with backgrounds, and a subtraction would
turn an amorphous hump into something peak-like). Output per pattern: calibrated
probabilities for the 230 space groups, the extinction groups and the 7 crystal systems, and
`crystalline`: False when the crystal-system head is less sure than `crystalline_threshold`
(the 1 % quantile of its confidence on crystal patterns at calibration), which is what a flat
line, noise or an amorphous hump gives after the outlier-exposure training.

Bundle: `weights.safetensors` + `card.json` (grid, label sets, architecture, calibration,
training recipe, metrics, versions); see `xrd_nexus_ml.bundle`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xrd_nexus_ml import preprocess
from xrd_nexus_ml.bundle import (
    load_state,
    read_bundle,
    resolve_bundle,
    software_versions,
    weights_digest,
    write_bundle,
)
from xrd_nexus_ml.errors import ModelBundleError
from xrd_nexus_ml.models.resnet1d import ResNetConfig, SymmetryClassifier
from xrd_nexus_ml.pattern import QGrid
from xrd_nexus_ml.physics import symmetry

KIND = "spacegroup-resnet"
CARD_VERSION = 1
CRYSTAL_SYSTEMS = symmetry.CRYSTAL_SYSTEMS
#: What a head says when its top probability is below its answer threshold.
UNDETERMINED = "undetermined"
#: Answer thresholds of a card that records none: an answer only at even odds or better.
DEFAULT_ANSWER_THRESHOLDS = {"space_group": 0.5, "extinction_group": 0.5, "crystal_system": 0.5}


def head_sizes() -> dict[str, int]:
    """Classes per head: 230 space groups, the extinction groups, 7 crystal systems."""
    return {"space_group": 230, "extinction_group": symmetry.N_EXTINCTION_GROUPS, "crystal_system": 7}


def targets_from_space_groups(space_groups) -> dict[str, torch.Tensor]:
    """0-based class indices of each head for space-group numbers 1-230."""
    sg = [int(s) for s in space_groups]
    return {"space_group": torch.tensor([s - 1 for s in sg], dtype=torch.long),
            "extinction_group": torch.tensor([symmetry.extinction_group(s) for s in sg], dtype=torch.long),
            "crystal_system": torch.tensor([symmetry.crystal_system_index(s) for s in sg], dtype=torch.long)}


def model_input(intensity: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(n, 2, G) float32 tensor of `preprocess.model_input` (one pattern or a stack; arrays or tensors)."""
    return torch.from_numpy(preprocess.model_input(np.atleast_2d(np.asarray(intensity)),
                                                   np.atleast_2d(np.asarray(mask, dtype=bool))))


@dataclass
class SpaceGroupPrediction:
    """Top-k of each head with probabilities, whether the pattern looks crystalline, and which
    heads answer: a head whose top probability is below the model's answer threshold for it
    says "undetermined" (`answer`), so that no guess is written where an answer is expected."""

    space_groups: list[tuple[int, str, float]]  # (number, Hermann-Mauguin symbol, probability)
    extinction_groups: list[tuple[int, str, float]]  # (index, name, probability)
    crystal_systems: list[tuple[str, float]]
    crystalline: bool
    confidence: float  # the crystal-system head's top probability, compared with the threshold
    answered: dict[str, bool] = field(default_factory=dict)  # per head: top probability >= its threshold

    @property
    def space_group(self) -> tuple[int, str, float] | None:
        """(number, symbol, probability), or None: undetermined or not a crystal pattern."""
        return self.space_groups[0] if self.crystalline and self.answered.get("space_group") else None

    @property
    def extinction_group(self) -> tuple[int, str, float] | None:
        return self.extinction_groups[0] if self.crystalline and self.answered.get("extinction_group") else None

    @property
    def crystal_system(self) -> tuple[str, float] | None:
        return self.crystal_systems[0] if self.crystalline and self.answered.get("crystal_system") else None

    def answer(self) -> dict:
        """Each head's answer, or "undetermined" (below its threshold, or not a crystal pattern)."""
        sg, ext, cs = self.space_group, self.extinction_group, self.crystal_system
        return {"space_group": ({"number": sg[0], "symbol": sg[1], "probability": round(sg[2], 4)} if sg
                                else UNDETERMINED),
                "extinction_group": {"name": ext[1], "probability": round(ext[2], 4)} if ext else UNDETERMINED,
                "crystal_system": {"name": cs[0], "probability": round(cs[1], 4)} if cs else UNDETERMINED}

    def to_dict(self) -> dict:
        return {"answer": self.answer(), "space_group": [{"number": n, "symbol": s, "probability": round(p, 4)}
                                for n, s, p in self.space_groups],
                "extinction_group": [{"index": i, "name": s, "probability": round(p, 4)}
                                     for i, s, p in self.extinction_groups],
                "crystal_system": [{"name": s, "probability": round(p, 4)} for s, p in self.crystal_systems],
                "crystalline": self.crystalline, "confidence": round(self.confidence, 4)}


@dataclass
class SpaceGroupModel:
    """The network and what inference needs: grid, per-head temperatures, crystallinity threshold."""

    network: SymmetryClassifier
    grid: QGrid
    architecture: ResNetConfig
    temperatures: dict[str, float] = field(default_factory=lambda: {k: 1.0 for k in head_sizes()})
    crystalline_threshold: float = 0.0
    answer_thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ANSWER_THRESHOLDS))
    answer_thresholds_source: str = "default: even odds (the card records no tuned thresholds)"
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    source: str = ""

    @property
    def model_id(self) -> str:
        """`space_group/<kind>@<weights file digest>`: the id the live engine and NeXus files give it
        ("unsaved" for a model not written to or read from a bundle)."""
        return f"space_group/{KIND}@{weights_digest(self.source) if self.source else 'unsaved'}"

    @torch.inference_mode()
    def probabilities(self, inputs: torch.Tensor, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Calibrated probabilities per head for (n, 2, G) inputs from `model_input`."""
        if self.network.training:  # walking every module costs time on every call: only when needed
            self.network.eval()
        device = next(self.network.parameters()).device
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.network.heads}
        for start in range(0, inputs.shape[0], batch_size):
            logits = self.network(inputs[start:start + batch_size].to(device))
            for name, value in logits.items():
                parts[name].append(torch.softmax(value.float() / self.temperatures[name], dim=1).cpu().numpy())
        return {k: (np.concatenate(v) if v else np.zeros((0, self.network.heads[k].out_features), np.float32))
                for k, v in parts.items()}

    def predict(self, intensity, mask, top_k: int = 5) -> list[SpaceGroupPrediction]:
        """One prediction per pattern (rows of intensity/mask on the model grid)."""
        return self.predictions(self.probabilities(model_input(intensity, mask)), top_k)

    def predictions(self, probs: dict[str, np.ndarray], top_k: int = 5) -> list[SpaceGroupPrediction]:
        """Top-k per head and the crystallinity flag from `probabilities`' output."""
        out = []
        for i in range(probs["space_group"].shape[0]):
            sg, ext, cs = probs["space_group"][i], probs["extinction_group"][i], probs["crystal_system"][i]
            sg_top = np.argsort(-sg)[:top_k]
            ext_top = np.argsort(-ext)[:top_k]
            cs_top = np.argsort(-cs)[:3]
            confidence = float(cs.max())
            answered = {"space_group": float(sg[sg_top[0]]) >= self.answer_thresholds["space_group"],
                        "extinction_group": float(ext[ext_top[0]]) >= self.answer_thresholds["extinction_group"],
                        "crystal_system": confidence >= self.answer_thresholds["crystal_system"]}
            out.append(SpaceGroupPrediction(
                space_groups=[(int(j) + 1, symmetry.space_group_symbol(int(j) + 1), float(sg[j])) for j in sg_top],
                extinction_groups=[(int(j), symmetry.extinction_group_name(int(j)), float(ext[j])) for j in ext_top],
                crystal_systems=[(CRYSTAL_SYSTEMS[j], float(cs[j])) for j in cs_top],
                crystalline=confidence >= self.crystalline_threshold, confidence=confidence, answered=answered))
        return out

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    # -- bundle ----------------------------------------------------------------------------
    def card(self) -> dict:
        return {"kind": KIND, "card_version": CARD_VERSION, "grid": self.grid.to_dict(),
                "input": "sqrt of the max-normalised intensity over the measured points (no background "
                         "subtraction); channel 2 = mask",
                "heads": head_sizes(), "crystal_systems": list(CRYSTAL_SYSTEMS),
                "architecture": {"family": "ResNet1D (basic blocks)", **self.architecture.to_dict()},
                "calibration": {"temperatures": self.temperatures, "crystalline_threshold": self.crystalline_threshold,
                                "answer_thresholds": self.answer_thresholds,
                                "answer_thresholds_source": self.answer_thresholds_source},
                "n_parameters": self.n_parameters, "training": self.training, "metrics": self.metrics,
                "versions": software_versions()}

    def save(self, directory) -> Path:
        tensors = {f"network.{k}": v for k, v in self.network.state_dict().items()}
        self.source = str(write_bundle(directory, tensors, self.card()))
        return Path(self.source)

    @classmethod
    def load(cls, directory, device: str | torch.device = "cpu") -> SpaceGroupModel:
        """Read a bundle written by `save`; errors name the file."""
        directory = Path(directory)
        card, tensors = read_bundle(directory, (KIND,), CARD_VERSION)
        try:
            if card["heads"] != head_sizes():
                raise ModelBundleError(f"{directory / 'card.json'}: heads {card['heads']} differ from this code's "
                                       f"{head_sizes()}")
            arch = {k: v for k, v in card["architecture"].items() if k != "family"}
            config = ResNetConfig.from_dict(arch)
            network = SymmetryClassifier(config, head_sizes())
            load_state(network, tensors, "network", directory)
            grid = card["grid"]
            calibration = card["calibration"]
            model = cls(network=network.to(device).eval(),
                        grid=QGrid(float(grid["q_min"]), float(grid["q_max"]), int(grid["n_points"])),
                        architecture=config,
                        temperatures={k: float(calibration["temperatures"][k]) for k in head_sizes()},
                        crystalline_threshold=float(calibration["crystalline_threshold"]),
                        answer_thresholds={k: float(v) for k, v in {
                            **DEFAULT_ANSWER_THRESHOLDS, **calibration.get("answer_thresholds", {})}.items()},
                        answer_thresholds_source=str(calibration.get(
                            "answer_thresholds_source", cls.answer_thresholds_source)),
                        training=card.get("training", {}), metrics=card.get("metrics", {}), source=str(directory))
        except ModelBundleError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise ModelBundleError(f"{directory / 'card.json'}: incomplete or inconsistent model card ({err!r})") \
                from None
        return model


def load_model(path_or_name: str | Path | None = None, device: str | torch.device = "cpu") -> SpaceGroupModel:
    """A bundle folder, or None/"default"/"spacegroup/default" for the shipped model."""
    return SpaceGroupModel.load(resolve_bundle(path_or_name, task="spacegroup"), device)


def true_class_ranks(probabilities: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """0-based rank of the true class in each row; a tie counts against the model.

    Ranking by classes scoring at least as high as the truth means a flat output (all classes
    equal, as a model should give for a non-crystal) ranks last, not first.
    """
    rows = np.arange(len(truth))
    p_true = probabilities[rows, truth][:, None]
    return (probabilities >= p_true).sum(axis=1) - 1


def predict_patterns(patterns, model: SpaceGroupModel, top_k: int = 5):
    """One `SpaceGroupPrediction` per measured `Diffractogram`, resampled onto the model's grid."""
    grid = [p.resample(model.grid) for p in patterns]
    intensity = np.stack([g.intensity for g in grid]) if grid else np.zeros((0, model.grid.n_points), np.float32)
    mask = np.stack([g.mask for g in grid]) if grid else np.zeros((0, model.grid.n_points), bool)
    return model.predict(intensity, mask, top_k=top_k)
