"""Argument types and argument groups that several commands share, and JSON output."""

from __future__ import annotations

import argparse
import json
import math

STRAIN_HELP = ("largest relative lattice mismatch a reference is fitted with (default 0.04, for in-situ series; "
               "0.015 suits ex-situ laboratory patterns and calls more foreign phases out of library)")


def finite(value):
    """`value` with every NaN or infinite number replaced by None (null): JSON has no NaN, and a
    strict parser (JavaScript, jq, a data portal) refuses the `NaN` Python would write."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(payload, indent: int | None = 2) -> str:
    """Strict JSON (no NaN): numpy scalars as numbers, non-finite numbers as null."""
    return json.dumps(finite(payload), indent=indent, default=float, allow_nan=False)


def print_json(payload) -> None:
    """One JSON document on standard output (see `to_json`)."""
    print(to_json(payload))


def strain_fraction(text: str) -> float:
    """argparse type of --max-strain: a fraction in (0, 0.5)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 0.5:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 0.5 (0.015 = 1.5 %), got {text!r}")
    return value


def class_counts(text: str) -> list[int]:
    """argparse type of --sizes: comma-separated class counts of at least 2 ("100,1e3")."""
    try:
        sizes = [int(float(t)) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes wants comma-separated class counts, got {text!r}") from None
    if not sizes or any(s < 2 for s in sizes):
        raise argparse.ArgumentTypeError(f"--sizes wants class counts of at least 2, got {text!r}")
    return sizes


def element_list(text: str | None) -> list[str] | None:
    """--elements "Li,Mn,O" as a list (None when not given or empty)."""
    if not text:
        return None
    return [e.strip() for e in text.split(",") if e.strip()]


def name_list(text: str) -> str | list[str]:
    """--materials "all" or "KCl,NaCl" as "all" or a list of names."""
    return "all" if text == "all" else [m.strip() for m in text.split(",") if m.strip()]


def add_live_model_arguments(p: argparse.ArgumentParser, default: str = "default") -> None:
    """The models the live classifier runs: the phase-transition model and the optional others."""
    p.add_argument("--transition-model", default="default", metavar="DIR|default|auto|none",
                   help="phase-transition model: a bundle folder (e.g. from `train transition`), 'default' (the "
                        "shipped (Mg,Fe)O end-to-end model), 'auto' (the training-free detector: any sample, no "
                        "CIF) or 'none' (default: default)")
    p.add_argument("--spacegroup-model", default=default,
                   help=f"space-group model: a bundle folder, 'default' (shipped) or 'none' (default: {default})")
    p.add_argument("--identification-model", default=default,
                   help="material-identification model: a bundle folder, a shipped name ('default') or 'none' "
                        f"(default: {default})")
    p.add_argument("--identification-screen", type=int, default=None, metavar="N",
                   help="classes the identification screen fits for a later phase the network did not propose "
                        "(default 3; 0: the network's proposals only, faster live; recorded in the provenance)")


def live_models(args) -> dict:
    """The keyword arguments of `InferenceEngine.from_bundles` (and of the functions that build one)
    from `add_live_model_arguments`' flags."""
    return {"transition_model": args.transition_model, "spacegroup_model": args.spacegroup_model,
            "identification_model": args.identification_model,
            "identification_options": None if args.identification_screen is None
            else {"screen": args.identification_screen}}
