"""Figures. Plotting only: every number drawn here was computed elsewhere."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _normalised(y: np.ndarray) -> np.ndarray:
    top = np.max(y)
    return y / top if top > 0 else y


def plot_demo(path: Path, grid, clean, augmented, names, measured: dict, matches: dict, references: dict) -> None:
    """Three panels: clean simulations, augmented copies of one structure, measured vs best match."""
    fig, axes = plt.subplots(3, 1, figsize=(10, 11), constrained_layout=True)

    ax = axes[0]
    for i, name in enumerate(names):
        ax.plot(grid, _normalised(clean.intensity[i].cpu().numpy()) + i, lw=0.7)
        ax.text(0.99, i + 0.3, name, ha="right", fontsize=7, transform=ax.get_yaxis_transform())
    ax.set_title("Batched simulation on the canonical q grid (clean)")
    ax.set_xlabel("q (1/Å)")
    ax.set_yticks([])

    ax = axes[1]
    for i in range(augmented.intensity.shape[0]):
        y = augmented.intensity[i].cpu().numpy()
        mask = augmented.mask[i].cpu().numpy()
        ax.plot(grid, np.where(mask, _normalised(y), np.nan) + 1.1 * i, lw=0.7)
    ax.plot(grid, _normalised(clean.intensity[0].cpu().numpy()) - 1.2, color="k", lw=0.7, label="clean")
    ax.set_title(f"Physics-informed augmentation of {names[0]} (seeded draws; gaps are masked q ranges)")
    ax.set_xlabel("q (1/Å)")
    ax.set_yticks([])
    ax.legend(loc="upper right", fontsize=7)

    ax = axes[2]
    for i, (file, pattern) in enumerate(sorted(measured.items())):
        offset = 1.3 * i
        y = np.where(pattern.mask, pattern.intensity, np.nan)
        ax.plot(grid, y + offset, lw=0.7, label=None)
        best = matches[file]
        ax.plot(grid, np.where(pattern.mask, _normalised(references[best]), np.nan) + offset, lw=0.6, alpha=0.7,
                ls="--")
        ax.text(0.99, offset + 0.5, f"{file}: best match {best}", ha="right", fontsize=7,
                transform=ax.get_yaxis_transform())
    ax.set_title("Measured Cu Kα patterns on the canonical grid (solid) and best simulated reference (dashed)")
    ax.set_xlabel("q (1/Å)")
    ax.set_yticks([])
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_identification(pattern, result, model, out_dir: Path) -> Path:
    """The measured pattern (2θ if it has a wavelength, else q) with the sticks of each identified
    phase's fitted reference, shifted by its fitted strain; written to `out_dir/<name>.phases.png`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_name = {p["name"]: i for i, p in enumerate(model.phases)}
    use_two_theta = pattern.axis == "two_theta" and pattern.wavelength
    x = pattern.two_theta if use_two_theta else pattern.q
    fig, ax = plt.subplots(figsize=(10, 4.5), constrained_layout=True)
    ax.plot(x, _normalised(np.asarray(pattern.intensity, float)), color="k", lw=0.7, label="measured")
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    for k, phase in enumerate(result.phases):
        q, inten = model.sticks[by_name[phase.reference]]
        q = q / (1.0 + phase.strain)
        if use_two_theta:
            s = q * pattern.wavelength / (4 * np.pi)
            q, inten = np.degrees(2 * np.arcsin(s[s < 1])), inten[s < 1]
        keep = (q >= lo) & (q <= hi)
        base = -0.15 * (k + 1)
        ax.vlines(q[keep], base, base + 0.12 * inten[keep], color=f"C{k}", lw=1.0,
                  label=f"{phase.formula} ({phase.space_group_symbol}), p={phase.probability:.2f}")
    title = Path(result.source).name + (": OUT OF LIBRARY" if result.out_of_library else "")
    ax.set_title(title)
    ax.set_xlabel("2θ (°)" if use_two_theta else "q (1/Å)")
    ax.set_yticks([])
    ax.legend(loc="upper right", fontsize=8)
    path = out_dir / f"{Path(result.source).stem}.phases.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
