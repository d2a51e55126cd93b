"""Phase classifiers for frames along a scan: the seed's binned vote, its end-to-end variant, a cosine baseline.

Input preparation (`prepare_frames`) lives in `frames`; compression alignment (`CompressionAlignment`) in `alignment`.

Models (all: `fit(patterns, labels)`, `predict_proba(patterns) -> (n, n_phases)`, `save`/`load`):

BinnedVoteClassifier
    Sun, Brockhauser, Plueckthun, Konopkova (European XFEL; PaNOSC use case 3; Sun &
    Brockhauser, Data Science Journal 21, 15, 2022): the pattern is cut into bins of
    `bin_size` grid points; each bin has its own two-layer network (bin_size -> hidden -> phases),
    all bins trained at once as one batched module. Bin b votes (its class probabilities, or
    its argmax with vote="hard") weighted by the believability w_b = max(0, 1.4337 A_b^2 -
    0.4337), A_b its accuracy. With a handful of training patterns a bin network memorises its
    training set, so A_b on the training set itself is ~1 for every bin, informative or not; by
    default A_b is the out-of-fold accuracy of `cv_folds`-fold cross-validation on the
    single-phase training patterns (`accuracy_source="training"` gives the literal recipe).
    Bins outside a frame's measured range do not vote. The vote share is calibrated to a
    probability (Platt scaling on the out-of-fold votes).
EndToEndClassifier
    The same per-bin hidden layers, trained end to end with learned bin weights: head="dense"
    (default) gates each bin's hidden units by its learned weight and feeds all of them to one
    fully connected layer, so bins can be compared with each other (a split 111 next to an
    unsplit 200 is what identifies the rhombohedral phase, whatever the sample's peak width);
    head="weighted" sums per-bin logits with the learned weights instead. Bins are dropped at
    random in training; unmeasured bins are left out. The output is calibrated to the phase
    fraction by Platt scaling on out-of-fold predictions (`cv_folds`), which the change point
    needs: its 50 % point is the transition pressure.
CosineBaseline
    Plain cosine similarity (on measured points, no alignment) to every single-phase training
    pattern; a phase scores its best match; probabilities are a softmax of the scores with
    temperature `temperature`.

Labels may be integers (n,) or phase fractions (n, n_phases) (soft labels, e.g. simulated
coexistence). Bundles: `<dir>/weights.safetensors` (tensors only) and `<dir>/card.json`
(kind, phases, grid, alignment, hyper-parameters, training recipe, metrics, versions).
Loading never unpickles; a missing, corrupt or mismatched file raises `ModelBundleError`
naming it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xrd_nexus_ml.bundle import read_bundle, software_versions, write_bundle
from xrd_nexus_ml.errors import ModelBundleError, XrdNexusMlError
from xrd_nexus_ml.pattern import CANONICAL_GRID, QGrid
from xrd_nexus_ml.preprocess.frames import PreparedFrames, prepare_frames
from xrd_nexus_ml.transitions.alignment import CompressionAlignment
from xrd_nexus_ml.transitions.calibration import changepoint_calibration

#: w_b = max(0, A * A_b^2 - B): the seed's believability weight of a bin with accuracy A_b.
BELIEVABILITY_A = 1.4337
BELIEVABILITY_B = 0.4337
CARD_VERSION = 1


def believability(accuracy) -> np.ndarray:
    """The seed's bin weight w_b = max(0, 1.4337 A_b^2 - 0.4337) (0 below A_b ≈ 0.55, 1 at A_b = 1)."""
    a = np.asarray(accuracy, dtype=float)
    return np.maximum(0.0, BELIEVABILITY_A * a**2 - BELIEVABILITY_B)


# -- the batched per-bin network ----------------------------------------------------------------


class BinNets(nn.Module):
    """n_bins independent two-layer networks (bin_size -> hidden -> n_classes), evaluated at once."""

    def __init__(self, n_bins: int, bin_size: int, hidden: int, n_classes: int):
        super().__init__()
        scale1, scale2 = 1.0 / math.sqrt(bin_size), 1.0 / math.sqrt(hidden)
        self.w1 = nn.Parameter(torch.randn(n_bins, bin_size, hidden) * scale1)
        self.b1 = nn.Parameter(torch.zeros(n_bins, hidden))
        self.w2 = nn.Parameter(torch.randn(n_bins, hidden, n_classes) * scale2)
        self.b2 = nn.Parameter(torch.zeros(n_bins, n_classes))

    def forward(self, bins: torch.Tensor) -> torch.Tensor:
        """bins (B, n_bins, bin_size) -> logits (B, n_bins, n_classes)."""
        h = torch.tanh(torch.einsum("nbi,bih->nbh", bins, self.w1) + self.b1)
        return torch.einsum("nbh,bhc->nbc", h, self.w2) + self.b2


def _soft_labels(labels, n_classes: int | None) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim == 2:
        y = y.astype(float)
        if np.any(y < 0) or not np.allclose(y.sum(1), 1.0, atol=1e-3):
            raise XrdNexusMlError("soft labels (n, n_phases) must be non-negative and sum to 1 per row")
        return y
    y = y.astype(int)
    k = n_classes if n_classes is not None else int(y.max()) + 1
    if y.min() < 0 or y.max() >= k:
        raise XrdNexusMlError(f"labels must lie in 0..{k - 1}, got {y.min()}..{y.max()}")
    return np.eye(k)[y]


def _augment(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, copies: int, noise: float,
             max_shift: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`copies` noisy, slightly shifted copies of each pattern (and the index of each one's original)."""
    n = x.shape[0]
    index = torch.arange(n).repeat(copies)
    xs, ms = x[index], mask[index]
    if max_shift > 0:
        shifts = torch.randint(-max_shift, max_shift + 1, (xs.shape[0],), generator=generator)
        rows = (torch.arange(xs.shape[1]).unsqueeze(0) - shifts.unsqueeze(1)).clamp(0, xs.shape[1] - 1)
        xs, ms = torch.gather(xs, 1, rows), torch.gather(ms, 1, rows)
    scale = torch.rand(xs.shape[0], 1, generator=generator) * noise
    xs = (xs + scale * torch.randn(xs.shape, generator=generator)).clamp_min(0.0) * ms
    return xs, ms, index


class _Base:
    """What every transition model shares: phases, grid, input preparation, alignment, bundles."""

    kind = "base"

    def __init__(self, phase_names: Sequence[str] = ("low", "high"), grid: QGrid = CANONICAL_GRID, seed: int = 0,
                 align: bool = True, scale_range=(0.95, 1.12)):
        self.phase_names = tuple(str(p) for p in phase_names)
        if len(self.phase_names) < 2:
            raise XrdNexusMlError("a phase classifier needs at least two phases")
        self.grid = grid
        self.seed = int(seed)
        self.align = bool(align)
        self.alignment = CompressionAlignment(grid, scale_range=scale_range)
        self.fitted = False
        self.recipe: dict = {}
        self.metrics: dict = {}
        self.changepoint: dict = {}  # the change point's systematic error on calibration ramps (`calibration`)

    @property
    def n_phases(self) -> int:
        return len(self.phase_names)

    def prepare(self, patterns, **kwargs) -> PreparedFrames:
        return prepare_frames(patterns, self.grid, **kwargs)

    def inputs(self, prepared: PreparedFrames) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, mask, index): the usable frames as the network sees them (compression-aligned if
        the model aligns; x float32 (n_ok, G), mask bool) and their rows in `prepared`."""
        ok = np.flatnonzero(prepared.ok)
        x, mask = prepared.x[ok], prepared.mask[ok]
        if self.align and len(ok):
            x, mask, _ = self.alignment.apply(x, mask)
        return x.astype(np.float32, copy=False), mask, ok

    _inputs = inputs

    def proba(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(n, n_phases) probabilities of inputs from `inputs` (usable frames only, no NaN rows)."""
        self._check_fitted()
        if not len(x):
            return np.zeros((0, self.n_phases))
        return self._proba(x, mask)

    def _check_fitted(self):
        if not self.fitted:
            raise XrdNexusMlError(f"{type(self).__name__} is not trained: call fit() or load() first")

    def predict_proba(self, patterns, **kwargs) -> np.ndarray:
        """(n, n_phases) phase probabilities; rows of flagged frames are NaN."""
        self._check_fitted()
        return self.predict_proba_prepared(self.prepare(patterns, **kwargs))

    def predict_proba_prepared(self, prepared: PreparedFrames, return_inputs: bool = False):
        """`predict_proba` of frames already prepared. return_inputs: also the model's inputs
        (x, mask, index) as from `inputs`, e.g. for `LibraryGate.similarity(prepared, inputs=...)`,
        which then does not align the frames a second time."""
        self._check_fitted()
        out = np.full((len(prepared), self.n_phases), np.nan)
        x, mask, ok = self.inputs(prepared)
        if len(ok):
            out[ok] = self._proba(x, mask)
        return (out, (x, mask, ok)) if return_inputs else out

    def predict(self, patterns, **kwargs) -> np.ndarray:
        """Most probable phase per frame; -1 for flagged frames."""
        p = self.predict_proba(patterns, **kwargs)
        bad = np.isnan(p).any(1)
        return np.where(bad, -1, np.nan_to_num(p, nan=-1.0).argmax(1))

    def _training_inputs(self, patterns, labels, prepare_kwargs):
        prepared = self.prepare(patterns, **prepare_kwargs)
        soft = _soft_labels(labels, self.n_phases)
        if len(soft) != len(prepared):
            raise XrdNexusMlError(f"{len(prepared)} patterns but {len(soft)} labels")
        ok = prepared.ok
        if ok.sum() < 2:
            raise XrdNexusMlError("fewer than two usable training patterns")
        if self.align:
            order = np.argsort(soft[ok].argmax(1), kind="stable")  # the reference starts from a lowest-phase pattern
            self.alignment.fit(prepared.x[ok][order], prepared.mask[ok][order])
        x, mask, index = self._inputs(prepared)
        return x, mask, soft[index]

    # -- bundles ------------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _all_tensors(self) -> dict[str, torch.Tensor]:
        tensors = dict(self._tensors())
        if self.align:
            tensors["alignment.reference"] = torch.as_tensor(self.alignment.reference, dtype=torch.float32)
        return tensors

    def _config(self) -> dict:
        return {}

    def card(self) -> dict:
        return {
            "card_version": CARD_VERSION,
            "kind": self.kind,
            "phases": list(self.phase_names),
            "input": {"grid": self.grid.to_dict(),
                      "preprocessing": "resample onto the q grid with mask; SNIP background (0.12 1/angstrom); "
                                       "max over measured points -> 1",
                      "alignment": {"enabled": self.align, "scale_range": list(self.alignment.scale_range)}},
            "config": self._config(),
            "seed": self.seed,
            "training": self.recipe,
            "metrics": self.metrics,
            "changepoint": self.changepoint,
            "versions": software_versions(),
        }

    def save(self, directory) -> Path:
        """Write `<directory>/weights.safetensors` and `<directory>/card.json`; returns the folder."""
        self._check_fitted()
        return write_bundle(directory, self._all_tensors(), self.card(), indent=2)

    def _restore_common(self, card: dict, tensors: dict, source: Path):
        if self.align:
            ref = _need(tensors, "alignment.reference", (self.grid.n_points,), source)
            self.alignment.reference = ref.float().numpy()
        self.recipe, self.metrics, self.fitted = card.get("training", {}), card.get("metrics", {}), True
        self.changepoint = card.get("changepoint", {})

    @classmethod
    def _from_bundle(cls, card: dict, tensors: dict[str, torch.Tensor], source: Path):
        raise NotImplementedError

    @classmethod
    def load(cls, directory):
        """Load a bundle written by `save`; a bundle of another kind is an error naming the card."""
        model = load_model(directory)
        if cls is not _Base and not isinstance(model, cls):
            raise ModelBundleError(f"{Path(directory) / 'card.json'}: holds a {model.kind!r} model, not {cls.kind!r}")
        return model


def _read_bundle(directory) -> tuple[dict, dict[str, torch.Tensor], Path]:
    card, tensors = read_bundle(directory, tuple(MODELS), CARD_VERSION)
    if "phases" not in card:
        raise ModelBundleError(f"{Path(directory) / 'card.json'}: the model card lacks 'phases'")
    return card, tensors, Path(directory)


def _need(tensors: dict, name: str, shape: tuple | None, source: Path) -> torch.Tensor:
    if name not in tensors:
        raise ModelBundleError(f"{source / 'weights.safetensors'}: tensor {name!r} is missing")
    t = tensors[name]
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ModelBundleError(f"{source / 'weights.safetensors'}: tensor {name!r} has shape {tuple(t.shape)}, "
                               f"expected {tuple(shape)}")
    return t


def load_model(directory):
    """Load any transition model bundle written by `save` (the kind is read from the card)."""
    card, tensors, source = _read_bundle(directory)
    try:
        return MODELS[card["kind"]]._from_bundle(card, tensors, source)
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, ModelBundleError):
            raise
        raise ModelBundleError(f"{source / 'card.json'}: incomplete or inconsistent model card ({err!r})") from None


def _common_args(card: dict) -> dict:
    g = card["input"]["grid"]
    align = card["input"].get("alignment", {})
    return {"grid": QGrid(float(g["q_min"]), float(g["q_max"]), int(g["n_points"])), "seed": card.get("seed", 0),
            "align": bool(align.get("enabled", False)), "scale_range": tuple(align.get("scale_range", (0.95, 1.12)))}


def _stratified_folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(max(2, k))]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for j, i in enumerate(idx):
            folds[j % len(folds)].append(int(i))
    return [np.array(sorted(f), dtype=int) for f in folds if f]


class _BinnedModel(_Base):
    """Shared by the two per-bin models: the bins every training pattern measured ("active")."""

    def __init__(self, phase_names, grid, bin_size, hidden, epochs, lr, weight_decay, copies, noise, max_shift,
                 seed, align, scale_range):
        super().__init__(phase_names, grid, seed, align, scale_range)
        self.bin_size, self.hidden, self.epochs, self.lr = int(bin_size), int(hidden), int(epochs), float(lr)
        self.weight_decay, self.copies = float(weight_decay), int(copies)
        self.noise, self.max_shift = float(noise), int(max_shift)
        self.n_bins = grid.n_points // self.bin_size
        self.active = torch.arange(self.n_bins)

    def _bins(self, x: torch.Tensor) -> torch.Tensor:
        """(n, G) -> (n, n_active, bin_size) of the active bins."""
        n = x.shape[0]
        return x[:, : self.n_bins * self.bin_size].reshape(n, self.n_bins, self.bin_size)[:, self.active]

    def _coverage(self, mask: torch.Tensor) -> torch.Tensor:
        """(n, n_active) fraction of each active bin that was measured."""
        return self._bins(mask.float()).mean(-1)

    def _choose_active(self, mask: np.ndarray):
        m = torch.as_tensor(mask)
        self.active = torch.arange(self.n_bins)
        covered = (self._coverage(m) > 0.5).float().mean(0) >= 0.5  # measured in at least half the patterns
        self.active = torch.nonzero(covered).flatten()
        if len(self.active) == 0:
            raise XrdNexusMlError("no bin of the model grid is measured by the training patterns")

    def _binned_config(self) -> dict:
        return {"bin_size": self.bin_size, "hidden": self.hidden, "epochs": self.epochs, "lr": self.lr,
                "weight_decay": self.weight_decay, "copies": self.copies, "noise": self.noise,
                "max_shift": self.max_shift}


# -- calibration ----------------------------------------------------------------------------------


def fit_platt(probabilities: np.ndarray, soft: np.ndarray) -> tuple[float, np.ndarray]:
    """Platt scaling for K phases: p' = softmax(a log p + b), fitted to soft labels (cross-entropy,
    slightly regularised so that separable training data do not send a to infinity)."""
    logp = torch.as_tensor(np.log(np.clip(probabilities, 1e-6, 1.0)), dtype=torch.float64)
    target = torch.as_tensor(soft, dtype=torch.float64)
    a = torch.ones(1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(logp.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (-(target * torch.log_softmax(a * logp + b, -1)).sum(-1).mean()
                + 1e-4 * (b**2).sum() + 1e-3 * (a**2).sum())  # finite even if the classes separate
        loss.backward()
        return loss

    opt.step(closure)
    return float(a.detach().clamp_min(1e-3)), (b.detach() - b.detach().mean()).numpy()


def apply_platt(probabilities: np.ndarray, a: float, b: np.ndarray) -> np.ndarray:
    z = a * np.log(np.clip(probabilities, 1e-6, 1.0)) + np.asarray(b)[None, :]
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


# -- the seed's binned vote ---------------------------------------------------------------------


class BinnedVoteClassifier(_BinnedModel):
    """Per-bin two-layer networks voting with the seed's believability weights (see module doc)."""

    kind = "binned_vote"

    def __init__(self, phase_names=("low", "high"), grid: QGrid = CANONICAL_GRID, bin_size: int = 32,
                 hidden: int = 8, epochs: int = 200, lr: float = 0.01, weight_decay: float = 1e-3,
                 accuracy_source: str = "cross_validation", cv_folds: int = 4, copies: int = 4,
                 noise: float = 0.02, max_shift: int = 1, vote: str = "soft", calibrate: bool = True, seed: int = 0,
                 align: bool = True, scale_range=(0.95, 1.12)):
        super().__init__(phase_names, grid, bin_size, hidden, epochs, lr, weight_decay, copies, noise, max_shift,
                         seed, align, scale_range)
        if vote not in ("hard", "soft"):
            raise XrdNexusMlError(f"vote must be 'hard' or 'soft', got {vote!r}")
        self.vote, self.calibrate = vote, bool(calibrate)
        self.platt_a, self.platt_b = 1.0, np.zeros(self.n_phases)
        if accuracy_source not in ("cross_validation", "training"):
            raise XrdNexusMlError(f"accuracy_source must be 'cross_validation' or 'training', got {accuracy_source!r}")
        self.accuracy_source, self.cv_folds = accuracy_source, int(cv_folds)
        self.nets = BinNets(len(self.active), self.bin_size, self.hidden, self.n_phases)
        self.bin_accuracy = torch.zeros(len(self.active))
        self.weights = torch.zeros(len(self.active))

    def _config(self) -> dict:
        return {**self._binned_config(), "accuracy_source": self.accuracy_source, "cv_folds": self.cv_folds,
                "vote": self.vote, "calibrate": self.calibrate,
                "believability": f"max(0, {BELIEVABILITY_A} A^2 - {BELIEVABILITY_B})"}

    def _train_nets(self, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor, seed: int) -> BinNets:
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        nets = BinNets(len(self.active), self.bin_size, self.hidden, self.n_phases)
        opt = torch.optim.Adam(nets.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            xs, _ms, index = _augment(x, m, generator, self.copies, self.noise, self.max_shift)
            logits = nets(self._bins(xs))  # (B, nb, C): every bin learns the frame's label on its own
            loss = -(y[index].unsqueeze(1) * torch.log_softmax(logits, -1)).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return nets

    def fit(self, patterns, labels, **prepare_kwargs) -> BinnedVoteClassifier:
        """Train on patterns (see `prepare_frames`) and labels (n,) or fractions (n, n_phases)."""
        xn, mn, soft = self._training_inputs(patterns, labels, prepare_kwargs)
        self._choose_active(mn)
        x, m = torch.as_tensor(xn), torch.as_tensor(mn)
        y = torch.as_tensor(soft, dtype=torch.float32)
        hard = y.argmax(1)
        self.nets = self._train_nets(x, m, y, self.seed)
        n_active = len(self.active)
        pure = torch.as_tensor(soft.max(1) >= 0.99)  # bins are scored on single-phase patterns only
        if not pure.any():
            raise XrdNexusMlError("the binned vote needs single-phase training patterns")
        oof = None
        if self.accuracy_source == "training":
            with torch.no_grad():
                pred = self.nets(self._bins(x[pure])).argmax(-1)
            correct = (pred == hard[pure].unsqueeze(1)).float().sum(0)
            counted = torch.full((n_active,), float(pure.sum()))
        else:
            correct, counted = torch.zeros(n_active), torch.zeros(n_active)
            oof = np.zeros((len(hard), n_active, self.n_phases), dtype=np.float32)
            for k, held in enumerate(_stratified_folds(hard.numpy(), self.cv_folds, self.seed)):
                train = np.setdiff1d(np.arange(len(hard)), held)
                nets = self._train_nets(x[train], m[train], y[train], self.seed + 1 + k)
                with torch.no_grad():
                    oof[held] = torch.softmax(nets(self._bins(x[held])), -1).numpy()
                held_pure = held[pure[held].numpy()]
                correct += (torch.as_tensor(oof[held_pure]).argmax(-1) == hard[held_pure].unsqueeze(1)).float().sum(0)
                counted += len(held_pure)
        self.bin_accuracy = correct / counted.clamp_min(1)
        self.weights = torch.as_tensor(believability(self.bin_accuracy.numpy()), dtype=torch.float32)
        self.platt_a, self.platt_b = 1.0, np.zeros(self.n_phases)
        if self.calibrate and oof is not None:  # vote share -> probability, on held-out single-phase patterns
            votes = self._vote(oof, mn)
            keep = pure.numpy()
            self.platt_a, self.platt_b = fit_platt(votes[keep], soft[keep])
        self.fitted = True
        self.recipe = {"n_patterns": int(len(hard)),
                       "per_phase": np.bincount(hard.numpy(), minlength=self.n_phases).tolist(), **self._config()}
        self.metrics = {"bins": self.n_bins, "bins_active": n_active, "bins_voting": int((self.weights > 0).sum()),
                        "best_bin_accuracy": float(self.bin_accuracy.max()),
                        "platt_a": self.platt_a, "platt_b": [float(v) for v in self.platt_b]}
        return self

    def bin_probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, n_active, n_phases) each active bin's own class probabilities."""
        with torch.no_grad():
            return torch.softmax(self.nets(self._bins(torch.as_tensor(x))), -1).numpy()

    def _vote(self, probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Believability-weighted vote share per phase from per-bin probabilities (n, nb, C)."""
        if self.vote == "hard":  # each bin casts one vote for its most probable phase
            probs = np.eye(self.n_phases)[probs.argmax(-1)]
        w = self.weights.numpy()[None, :] * (self._coverage(torch.as_tensor(mask)).numpy() > 0.5)
        total = w.sum(1, keepdims=True)
        vote = np.einsum("nb,nbc->nc", w, probs) / np.where(total > 0, total, 1.0)
        return np.where(total > 0, vote, 1.0 / self.n_phases)  # no believable bin measured: no opinion

    def _proba(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        vote = self._vote(self.bin_probabilities(x), mask)
        return apply_platt(vote, self.platt_a, self.platt_b) if self.calibrate else vote

    def _tensors(self):
        return {**{f"nets.{k}": v for k, v in self.nets.state_dict().items()}, "active": self.active.int(),
                "bin_accuracy": self.bin_accuracy.float(), "weights": self.weights.float(),
                "calibration.a": torch.tensor([self.platt_a], dtype=torch.float64),
                "calibration.b": torch.as_tensor(self.platt_b, dtype=torch.float64)}

    @classmethod
    def _from_bundle(cls, card, tensors, source):
        cfg = card["config"]
        model = cls(card["phases"], **{k: cfg[k] for k in (
            "bin_size", "hidden", "epochs", "lr", "weight_decay", "accuracy_source", "cv_folds", "copies", "noise",
            "max_shift", "vote", "calibrate")}, **_common_args(card))
        model.active = _need(tensors, "active", None, source).long()
        nb, bs, h, c = len(model.active), model.bin_size, model.hidden, model.n_phases
        state = {"w1": _need(tensors, "nets.w1", (nb, bs, h), source), "b1": _need(tensors, "nets.b1", (nb, h), source),
                 "w2": _need(tensors, "nets.w2", (nb, h, c), source), "b2": _need(tensors, "nets.b2", (nb, c), source)}
        model.nets = BinNets(nb, bs, h, c)
        model.nets.load_state_dict(state)
        model.bin_accuracy = _need(tensors, "bin_accuracy", (nb,), source)
        model.weights = _need(tensors, "weights", (nb,), source)
        model.platt_a = float(_need(tensors, "calibration.a", (1,), source)[0])
        model.platt_b = _need(tensors, "calibration.b", (c,), source).numpy()
        model._restore_common(card, tensors, source)
        return model


# -- end to end -----------------------------------------------------------------------------------


class _EndToEndNet(nn.Module):
    """Per-bin hidden layers, then either learned bin weights over per-bin logits ("weighted") or
    one fully connected layer over every bin's hidden units ("dense", bins can be compared)."""

    def __init__(self, n_bins, bin_size, hidden, n_classes, head: str = "weighted"):
        super().__init__()
        self.head = head
        self.bins = BinNets(n_bins, bin_size, hidden, n_classes)
        self.bin_logit = nn.Parameter(torch.zeros(n_bins))
        if head == "dense":
            self.dense = nn.Linear(n_bins * hidden, n_classes)

    def forward(self, bins: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """bins (B, nb, bs), keep (B, nb) bool -> (combined logits (B, C), per-bin logits (B, nb, C))."""
        nets = self.bins
        h = torch.tanh(torch.einsum("nbi,bih->nbh", bins, nets.w1) + nets.b1)
        per_bin = torch.einsum("nbh,bhc->nbc", h, nets.w2) + nets.b2
        score = self.bin_logit.unsqueeze(0).expand_as(keep).masked_fill(~keep, -torch.inf)
        weight = torch.softmax(score, dim=1).nan_to_num(0.0)  # a frame with no kept bin: all zero
        if self.head == "dense":  # unmeasured (or dropped) bins contribute nothing
            gate = weight * keep.sum(1, keepdim=True)  # learned bin weights, mean 1 over kept bins
            return self.dense((h * gate.unsqueeze(-1)).flatten(1)), per_bin
        return torch.einsum("nb,nbc->nc", weight, per_bin), per_bin


class EndToEndClassifier(_BinnedModel):
    """Per-bin two-layer networks + learned bin weights, trained end to end (see module doc)."""

    kind = "end_to_end"

    def __init__(self, phase_names=("low", "high"), grid: QGrid = CANONICAL_GRID, bin_size: int = 32,
                 hidden: int = 8, epochs: int = 300, lr: float = 0.01, weight_decay: float = 1e-3,
                 bin_dropout: float = 0.2, aux_weight: float = 0.0, copies: int = 4, noise: float = 0.02,
                 max_shift: int = 1, head: str = "dense", calibrate: bool = True, cv_folds: int = 4, seed: int = 0,
                 align: bool = True, scale_range=(0.95, 1.12)):
        super().__init__(phase_names, grid, bin_size, hidden, epochs, lr, weight_decay, copies, noise, max_shift,
                         seed, align, scale_range)
        if head not in ("weighted", "dense"):
            raise XrdNexusMlError(f"head must be 'weighted' or 'dense', got {head!r}")
        self.bin_dropout, self.aux_weight, self.head = float(bin_dropout), float(aux_weight), head
        self.calibrate, self.cv_folds = bool(calibrate), int(cv_folds)
        self.platt_a, self.platt_b = 1.0, np.zeros(self.n_phases)
        self.net = _EndToEndNet(len(self.active), self.bin_size, self.hidden, self.n_phases, head)

    def _config(self) -> dict:
        return {**self._binned_config(), "bin_dropout": self.bin_dropout, "aux_weight": self.aux_weight,
                "head": self.head, "calibrate": self.calibrate, "cv_folds": self.cv_folds}

    def _train(self, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor, seed: int) -> _EndToEndNet:
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        net = _EndToEndNet(len(self.active), self.bin_size, self.hidden, self.n_phases, self.head)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            xs, ms, index = _augment(x, m, generator, self.copies, self.noise, self.max_shift)
            keep = self._coverage(ms) > 0.5
            dropped = keep & (torch.rand(keep.shape, generator=generator) >= self.bin_dropout)
            keep = torch.where(dropped.any(1, keepdim=True), dropped, keep)
            combined, per_bin = net(self._bins(xs), keep)
            target = y[index]
            loss = -(target * torch.log_softmax(combined, -1)).sum(-1).mean()
            if self.aux_weight:  # every bin also learns the label on its own (as in the seed)
                aux = -(target.unsqueeze(1) * torch.log_softmax(per_bin, -1)).sum(-1)
                loss = loss + self.aux_weight * (aux * keep).sum() / keep.sum().clamp_min(1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return net

    def _raw(self, net: _EndToEndNet, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        keep = self._coverage(torch.as_tensor(mask)) > 0.5
        with torch.no_grad():
            combined, _ = net(self._bins(torch.as_tensor(x)), keep)
        p = torch.softmax(combined, -1).numpy()
        return np.where(keep.any(1, keepdim=True).numpy(), p, 1.0 / self.n_phases)

    def fit(self, patterns, labels, **prepare_kwargs) -> EndToEndClassifier:
        """Train on patterns (see `prepare_frames`) and labels (n,) or fractions (n, n_phases).

        calibrate: Platt scaling (a log p + b) of the output to the phase fractions, fitted on
        out-of-fold predictions of `cv_folds`-fold cross-validation over the same training set.
        """
        xn, mn, soft = self._training_inputs(patterns, labels, prepare_kwargs)
        self._choose_active(mn)
        x, m = torch.as_tensor(xn), torch.as_tensor(mn)
        y = torch.as_tensor(soft, dtype=torch.float32)
        hard = soft.argmax(1)
        self.platt_a, self.platt_b = 1.0, np.zeros(self.n_phases)
        if self.calibrate:
            oof = np.zeros_like(soft)
            for k, held in enumerate(_stratified_folds(hard, self.cv_folds, self.seed)):
                train = np.setdiff1d(np.arange(len(hard)), held)
                net = self._train(x[train], m[train], y[train], self.seed + 1 + k)
                oof[held] = self._raw(net, xn[held], mn[held])
            self.platt_a, self.platt_b = fit_platt(oof, soft)
        self.net = self._train(x, m, y, self.seed)
        self.fitted = True
        self.recipe = {"n_patterns": int(len(hard)), "per_phase": np.bincount(hard, minlength=self.n_phases).tolist(),
                       "n_fractional": int((soft.max(1) < 0.99).sum()), **self._config()}
        w = np.sort(self.bin_weights)[::-1]
        self.metrics = {"bins": self.n_bins, "bins_active": len(self.active),
                        "bins_carrying_half_the_weight": int(np.searchsorted(np.cumsum(w), 0.5) + 1),
                        "platt_a": self.platt_a, "platt_b": [float(v) for v in self.platt_b]}
        return self

    @property
    def bin_weights(self) -> np.ndarray:
        """Learned weight of each active bin (sums to 1)."""
        return torch.softmax(self.net.bin_logit.detach(), 0).numpy()

    def _proba(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        p = self._raw(self.net, x, mask)
        return apply_platt(p, self.platt_a, self.platt_b) if self.calibrate else p

    def _tensors(self):
        return {**{f"net.{k}": v for k, v in self.net.state_dict().items()}, "active": self.active.int(),
                "calibration.a": torch.tensor([self.platt_a], dtype=torch.float64),
                "calibration.b": torch.as_tensor(self.platt_b, dtype=torch.float64)}

    @classmethod
    def _from_bundle(cls, card, tensors, source):
        cfg = card["config"]
        model = cls(card["phases"], **{k: cfg[k] for k in (
            "bin_size", "hidden", "epochs", "lr", "weight_decay", "bin_dropout", "aux_weight", "copies", "noise",
            "max_shift", "head", "calibrate", "cv_folds")}, **_common_args(card))
        model.active = _need(tensors, "active", None, source).long()
        nb, bs, h, c = len(model.active), model.bin_size, model.hidden, model.n_phases
        shapes = {"bins.w1": (nb, bs, h), "bins.b1": (nb, h), "bins.w2": (nb, h, c), "bins.b2": (nb, c),
                  "bin_logit": (nb,)}
        if model.head == "dense":
            shapes.update({"dense.weight": (c, nb * h), "dense.bias": (c,)})
        model.net = _EndToEndNet(nb, bs, h, c, model.head)
        model.net.load_state_dict({k: _need(tensors, f"net.{k}", s, source) for k, s in shapes.items()})
        model.platt_a = float(_need(tensors, "calibration.a", (1,), source)[0])
        model.platt_b = _need(tensors, "calibration.b", (c,), source).numpy()
        model._restore_common(card, tensors, source)
        return model


# -- baseline -------------------------------------------------------------------------------------


class CosineBaseline(_Base):
    """Best cosine similarity to the training patterns of each phase, softmax over phases (no alignment)."""

    kind = "cosine_baseline"

    def __init__(self, phase_names=("low", "high"), grid: QGrid = CANONICAL_GRID, temperature: float = 0.02,
                 seed: int = 0, align: bool = False, scale_range=(0.95, 1.12)):
        super().__init__(phase_names, grid, seed, align, scale_range)
        self.temperature = float(temperature)
        self.references = torch.zeros(0, grid.n_points)
        self.reference_labels = torch.zeros(0, dtype=torch.long)
        self.span = (0, grid.n_points)

    def _config(self) -> dict:
        return {"temperature": self.temperature, "span": list(self.span)}

    def fit(self, patterns, labels, **prepare_kwargs) -> CosineBaseline:
        x, mask, soft = self._training_inputs(patterns, labels, prepare_kwargs)
        pure = soft.max(1) >= 0.99  # references are single-phase patterns (coexistence ones are skipped)
        if not pure.any():
            raise XrdNexusMlError("the cosine baseline needs single-phase training patterns")
        x, mask, soft = x[pure], mask[pure], soft[pure]
        measured = np.flatnonzero(mask.any(0))
        self.span = (int(measured[0]), int(measured[-1]) + 1)  # only the measured span is kept (small bundle)
        # kept in float16, what the bundle stores, so a reloaded model predicts exactly the same
        self.references = torch.as_tensor(x[:, self.span[0]: self.span[1]]).half().float()
        self.reference_labels = torch.as_tensor(soft.argmax(1), dtype=torch.long)
        self.fitted = True
        self.recipe = {"n_patterns": int(len(x)), **self._config()}
        return self

    def _proba(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        lo, hi = self.span
        xs = torch.as_tensor(x[:, lo:hi]).double()
        ms = torch.as_tensor(mask[:, lo:hi]).double()
        refs = self.references.double()
        num = (xs * ms) @ refs.T
        norm_x = (xs * ms).norm(dim=1, keepdim=True)
        norm_r = torch.sqrt((ms @ (refs**2).T).clamp_min(1e-30))  # each reference on the frame's measured points
        cosine = num / (norm_x * norm_r).clamp_min(1e-30)
        scores = torch.full((x.shape[0], self.n_phases), -1.0, dtype=torch.float64)
        for c in range(self.n_phases):
            sel = self.reference_labels == c
            if sel.any():
                scores[:, c] = cosine[:, sel].max(1).values
        return torch.softmax(scores / self.temperature, -1).numpy()

    def _tensors(self):
        return {"references": self.references.half(), "reference_labels": self.reference_labels.int()}

    @classmethod
    def _from_bundle(cls, card, tensors, source):
        cfg = card["config"]
        model = cls(card["phases"], temperature=cfg["temperature"], **_common_args(card))
        lo, hi = (int(v) for v in cfg["span"])
        refs = _need(tensors, "references", None, source)
        if refs.ndim != 2 or refs.shape[1] != hi - lo:
            raise ModelBundleError(f"{source / 'weights.safetensors'}: references have shape {tuple(refs.shape)}, "
                                   f"expected (n, {hi - lo})")
        model.span = (lo, hi)
        model.references = refs.float()
        model.reference_labels = _need(tensors, "reference_labels", (refs.shape[0],), source).long()
        model._restore_common(card, tensors, source)
        return model


#: Every transition model by its bundle kind.
MODELS: dict[str, type[_Base]] = {
    "binned_vote": BinnedVoteClassifier,
    "end_to_end": EndToEndClassifier,
    "cosine_baseline": CosineBaseline,
}


def train_models(training_set, seed: int = 0, fast: bool = False,
                 calibration_ramps: int | None = None, ramp_factory=None) -> dict[str, _Base]:
    """The recipe: the binned vote, the end-to-end network and the cosine baseline, trained on one
    `ramp.TrainingSet` (patterns with phase fractions), then the change point's systematic error
    of each measured on `calibration_ramps` simulated ramps (default 8, 2 when fast; 0: not
    measured; `ramp_factory`: how to draw them, see `calibration.changepoint_calibration`).
    fast: fewer epochs (tests, smoke runs)."""
    kwargs = {"two_theta": training_set.two_theta, "wavelength": training_set.wavelength}
    epochs = {"binned_vote": 60, "end_to_end": 80} if fast else {}
    names = training_set.phase_names
    models = {
        "binned_vote": BinnedVoteClassifier(names, seed=seed, **({"epochs": epochs["binned_vote"]} if fast else {})),
        "end_to_end": EndToEndClassifier(names, seed=seed, **({"epochs": epochs["end_to_end"]} if fast else {})),
        "cosine_baseline": CosineBaseline(names, seed=seed),
    }
    for model in models.values():
        model.fit(training_set.intensity, training_set.fractions, **kwargs)
        model.recipe["training_set"] = dict(getattr(training_set, "recipe", {}))
    if calibration_ramps is None:
        calibration_ramps = 2 if fast else 8
    if calibration_ramps:
        for model in models.values():
            model.changepoint = changepoint_calibration(model, n_ramps=calibration_ramps, seed=seed,
                                                        ramp_factory=ramp_factory)
    return models
