"""Kinematic powder diffraction of a batch: reflections, structure factors, Lorentz-polarisation.

Same physics as pymatgen's XRDCalculator (its form factors, its unpolarised-beam Lorentz-
polarisation factor, isotropic Debye-Waller factors), evaluated for a whole batch of
structures with tensor operations: only Friedel-unique reflections are computed (I(hkl) =
I(-h-k-l) without anomalous scattering) and counted twice.
"""

from __future__ import annotations

import math

import torch

from xrd_nexus_ml.physics.crystal import CrystalBatch
from xrd_nexus_ml.physics.form_factors import form_factor_table
from xrd_nexus_ml.physics.peaks import PeakList

#: Upper bound on elements of the (B, M, N) phase tensor evaluated at once; bounds memory.
PHASE_CHUNK_ELEMENTS = 2**24


def _half_space_box(h_max: int, k_max: int, l_max: int, device) -> torch.Tensor:
    """Integer hkl with |h|<=h_max..., one of each Friedel pair, without 000: (M, 3)."""
    h = torch.arange(0, h_max + 1, device=device)
    k = torch.arange(-k_max, k_max + 1, device=device)
    l = torch.arange(-l_max, l_max + 1, device=device)  # noqa: E741
    hkl = torch.cartesian_prod(h, k, l)
    hh, kk, ll = hkl.unbind(-1)
    half = (hh > 0) | ((hh == 0) & (kk > 0)) | ((hh == 0) & (kk == 0) & (ll > 0))
    return hkl[half]


def enumerate_reflections(crystals: CrystalBatch, q_max: float, q_min: float = 0.0):
    """Friedel-unique hkl with q_min <= q <= q_max for each structure, packed to (B, M, 3).

    Returns (hkl, q, valid). |h| <= q_max |a| / 2π bounds the search box of each structure;
    the batch shares the largest box, one more reason the simulator batches structures of
    similar size together.
    """
    g_max = q_max / (2.0 * math.pi)
    lengths = torch.linalg.norm(crystals.lattice, dim=-1)  # (B, 3) |a|, |b|, |c|
    bounds = torch.floor(g_max * lengths.amax(0) + 1e-9).long().tolist()
    box = _half_space_box(*bounds, device=crystals.device)  # (Mbox, 3)
    # |g|² = hᵀ G* h with the reciprocal metric G*: one (Mbox, 6) x (6, B) product for the batch
    recip = crystals.reciprocal_lattice
    metric = recip @ recip.transpose(1, 2)  # (B, 3, 3)
    h, k, l = box.to(metric.dtype).unbind(-1)  # noqa: E741
    monomials = torch.stack([h * h, k * k, l * l, 2 * h * k, 2 * h * l, 2 * k * l], dim=1)
    terms = torch.stack(
        [metric[:, 0, 0], metric[:, 1, 1], metric[:, 2, 2], metric[:, 0, 1], metric[:, 0, 2], metric[:, 1, 2]]
    )
    g2 = (monomials @ terms).T  # (B, Mbox)
    g_min = q_min / (2.0 * math.pi)
    inside = (g2 <= g_max**2) & (g2 >= g_min**2) & (g2 > 0)
    # compact the reflections inside the shell to the front of each row, in box order
    slot = torch.cumsum(inside, dim=1) - 1
    m = max(int(slot[:, -1].max().item()) + 1, 1)
    slot = torch.where(inside, slot, torch.full_like(slot, m))  # outside -> spill column
    box_index = torch.arange(box.shape[0], device=box.device).expand_as(slot)
    source = torch.zeros(len(crystals), m + 1, dtype=torch.long, device=box.device).scatter_(1, slot, box_index)
    valid = torch.zeros(len(crystals), m + 1, dtype=torch.bool, device=box.device).scatter_(1, slot, inside)
    source, valid = source[:, :m], valid[:, :m]
    hkl = box[source]  # (B, M, 3)
    q = 2.0 * math.pi * torch.sqrt(torch.gather(g2, 1, source).clamp_min(0))
    return hkl, torch.where(valid, q, torch.zeros_like(q)), valid


def lorentz_polarisation(two_theta_rad: torch.Tensor) -> torch.Tensor:
    """(1 + cos²2θ) / (sin²θ cosθ): unpolarised beam, powder geometry (as pymatgen)."""
    theta = two_theta_rad / 2.0
    return (1.0 + torch.cos(two_theta_rad) ** 2) / (torch.sin(theta) ** 2 * torch.cos(theta))


def scattering_species(crystals: CrystalBatch):
    """Distinct (Z, B) pairs of each structure: (species_z (B,K), species_b (B,K), atom_species (B,N)).

    Atoms of one species share f(s)·exp(-B s²), so the form factor is evaluated K times per
    reflection instead of N times, and the sum over atoms becomes a matrix product.
    """
    z = crystals.atomic_numbers
    key = z.to(torch.float64) * 1e6 + torch.round(crystals.b_factors.to(torch.float64) * 1e4)
    sorted_key, order = torch.sort(key, dim=1)
    new = torch.ones_like(sorted_key, dtype=torch.bool)
    new[:, 1:] = sorted_key[:, 1:] != sorted_key[:, :-1]
    rank_sorted = torch.cumsum(new.long(), dim=1) - 1
    atom_species = torch.empty_like(rank_sorted).scatter_(1, order, rank_sorted)
    k = int(rank_sorted.max().item()) + 1
    species_z = torch.zeros(z.shape[0], k, dtype=z.dtype, device=z.device).scatter_(1, atom_species, z)
    species_b = torch.zeros(z.shape[0], k, dtype=crystals.b_factors.dtype, device=z.device)
    species_b.scatter_(1, atom_species, crystals.b_factors)
    return species_z, species_b, atom_species


def structure_factor_squared(crystals: CrystalBatch, hkl: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """|F(hkl)|² for each reflection, (B, M); evaluated in chunks of M to bound memory.

    F = Σ_species f_k(s) exp(-B_k s²) Σ_{atoms j of k} occ_j exp(2πi h·x_j).
    """
    dtype = crystals.lattice.dtype
    species_z, species_b, atom_species = scattering_species(crystals)
    n_species = species_z.shape[1]
    debye_waller = bool((species_b != 0).any())
    # (B, N, K): occupancy of atom j if it belongs to species k
    weights = torch.nn.functional.one_hot(atom_species, n_species).to(dtype) * crystals.occupancy.unsqueeze(-1)
    coords_t = crystals.frac_coords.transpose(1, 2)
    n_batch, n_atoms = atom_species.shape
    chunk = max(1, PHASE_CHUNK_ELEMENTS // max(1, n_batch * n_atoms))
    out = []
    for start in range(0, hkl.shape[1], chunk):
        hkl_c = hkl[:, start : start + chunk].to(dtype)  # (B, m, 3)
        s = q[:, start : start + chunk] / (4.0 * math.pi)  # sinθ/λ, (B, m)
        f = form_factor_table(species_z, s)  # (B, m, K)
        if debye_waller:
            f = f * torch.exp(-species_b.unsqueeze(1) * (s * s).unsqueeze(-1))
        phase = (2.0 * math.pi) * torch.bmm(hkl_c, coords_t)  # (B, m, N)
        real = (torch.bmm(torch.cos(phase), weights) * f).sum(-1)
        imag = (torch.bmm(torch.sin(phase), weights) * f).sum(-1)
        out.append(real**2 + imag**2)
    return torch.cat(out, dim=1)


def reflection_intensities(crystals: CrystalBatch, wavelength: float, q_max: float, q_min: float = 0.0) -> PeakList:
    """Integrated intensity of every reflection (Friedel pairs counted once, ×2) up to q_max.

    q_max is capped at 4π/λ, the largest q the wavelength can reach.
    """
    q_max = min(q_max, 4.0 * math.pi / wavelength * (1 - 1e-9))
    hkl, q, valid = enumerate_reflections(crystals, q_max=q_max, q_min=q_min)
    f2 = structure_factor_squared(crystals, hkl, q)
    sin_theta = (q * wavelength / (4.0 * math.pi)).clamp(1e-6, 1 - 1e-9)
    lp = lorentz_polarisation(2.0 * torch.asin(sin_theta))
    intensity = torch.where(valid, 2.0 * f2 * lp, torch.zeros_like(f2))
    return PeakList(q=q, intensity=intensity, hkl=hkl, reciprocal_lattice=crystals.reciprocal_lattice)
