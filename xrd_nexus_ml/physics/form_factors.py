"""X-ray atomic form factors f(s), s = sin(θ)/λ, with the coefficients pymatgen's XRDCalculator uses.

The coefficients are read from pymatgen's own data file at run time (not copied), so our
simulator and the reference it is checked against share one table:
f(s) = Z - 41.78214 · s² · Σ_i a_i exp(-b_i s²).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import numpy as np
import torch
from pymatgen.core.periodic_table import Element

from xrd_nexus_ml.errors import StructureError

#: Highest atomic number the table is indexed by (pymatgen covers up to Z=98).
MAX_Z = 118


@cache
def coefficient_table() -> np.ndarray:
    """(MAX_Z + 1, 4, 2) array of (a_i, b_i); rows of elements without coefficients are NaN."""
    text = resources.files("pymatgen.analysis.diffraction").joinpath("atomic_scattering_params.json").read_text()
    params = json.loads(text)
    table = np.full((MAX_Z + 1, 4, 2), np.nan)
    for symbol, pairs in params.items():
        z = Element(symbol).Z
        arr = np.asarray(pairs, dtype=float)
        table[z, : arr.shape[0]] = arr
        table[z, arr.shape[0] :] = 0.0
    table[0] = 0.0  # Z = 0 pads batches of unequal size: it scatters nothing
    return table


@cache
def _coefficient_tensor(device: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(coefficient_table(), dtype=dtype, device=device)


def coefficients(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The coefficient table as a cached tensor on `device`."""
    return _coefficient_tensor(str(torch.device(device)), dtype)


def check_supported(atomic_numbers: np.ndarray, source: str | None = None) -> None:
    """Raise StructureError naming any element the form-factor table does not cover."""
    z = np.unique(np.asarray(atomic_numbers, dtype=int))
    z = z[z > 0]
    table = coefficient_table()
    bad = [int(v) for v in z if v > MAX_Z or np.isnan(table[v]).any()]
    if bad:
        names = ", ".join(Element.from_Z(v).symbol for v in bad)
        where = f"{source}: " if source else ""
        raise StructureError(f"{where}no X-ray form-factor coefficients for {names}")


#: f(s) is tabulated on s = sinθ/λ in [0, S_MAX] at step S_STEP and interpolated linearly:
#: a table look-up is far cheaper than four exponentials per reflection and species, and the
#: interpolation error (< 1e-6 of Z) is far below what the coefficients themselves claim.
S_MAX = 6.0
S_STEP = 5e-4


def form_factor(z: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """f of the elements `z` (shape (E,)) at s² (shape (..., 1)) from the coefficients: (..., E)."""
    coeff = coefficients(s2.device, s2.dtype)[z]  # (E, 4, 2)
    a, b = coeff[..., 0], coeff[..., 1]  # (E, 4)
    gaussians = (a * torch.exp(-b * s2.unsqueeze(-1))).sum(-1)  # (..., E)
    return z.to(s2.dtype) - 41.78214 * s2 * gaussians


@cache
def _table(device: str, dtype: torch.dtype) -> torch.Tensor:
    s = torch.arange(0.0, S_MAX + S_STEP, S_STEP, dtype=torch.float64)
    z = torch.arange(MAX_Z + 1)
    with torch.no_grad():
        table = form_factor(z, (s**2).unsqueeze(-1).to(torch.float64))  # (S, Z)
    return torch.nan_to_num(table.T.contiguous(), nan=0.0).to(device=device, dtype=dtype)


def form_factor_table(z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """f of per-row elements `z` (B, K) at s = sinθ/λ (B, M) by table look-up: (B, M, K)."""
    table = _table(str(s.device), s.dtype)  # (Z, S)
    n_s = table.shape[1]
    position = (s.clamp(0.0, S_MAX) / S_STEP).unsqueeze(-1)  # (B, M, 1)
    lower = position.floor().clamp_max(n_s - 2)
    frac = position - lower
    flat = (z.unsqueeze(1) * n_s + lower.long()).flatten()  # (B*M*K,) into the flattened table
    flat_table = table.view(-1)
    f_low = flat_table[flat].view(*s.shape, z.shape[1])
    f_high = flat_table[flat + 1].view(*s.shape, z.shape[1])
    return f_low + frac * (f_high - f_low)
