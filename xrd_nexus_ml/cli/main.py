"""The parser of `xrd-nexus-ml` assembled from the subject modules, and `main`."""

from __future__ import annotations

import argparse
import logging
import sys

from xrd_nexus_ml.cli import identify, live, nexus, patterns, spacegroup, transitions
from xrd_nexus_ml.errors import XrdNexusMlError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xrd-nexus-ml",
        description="ML identification of powder diffraction patterns, live in Bluesky scans, with NeXus output.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = sub.add_parser("bench", help="benchmarks that print JSON").add_subparsers(
        dest="bench", required=True, metavar="WHAT")
    evaluate = sub.add_parser("evaluate", help="evaluations that print JSON").add_subparsers(
        dest="evaluation", required=True, metavar="WHAT")
    train = sub.add_parser("train", help="train models and write their bundles").add_subparsers(
        dest="training", required=True, metavar="WHAT")
    live.add_parsers(sub, bench)
    patterns.add_parsers(sub, bench)
    identify.add_parsers(sub, evaluate, bench, train)
    transitions.add_parsers(sub, evaluate, train)
    spacegroup.add_parsers(evaluate, train)
    nexus.add_parsers(sub)
    return parser


def _check_wavelength_argument(args) -> None:
    """Every command's --wavelength, checked before anything runs (`resolve_wavelength`: a number of Å
    in the X-ray/neutron range, or an anode name), so that a bad value is refused with exit status 2
    even where every file records its own wavelength and the argument would never be used."""
    value = getattr(args, "wavelength", None)
    if value is not None:
        from xrd_nexus_ml.pattern import resolve_wavelength  # local: start-up time

        try:
            resolve_wavelength(value)
        except XrdNexusMlError as err:
            raise type(err)(f"--wavelength: {getattr(err, 'problem', err)}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("silx.opencl").setLevel(logging.ERROR)  # pyFAI's optional OpenCL probe is noise here
    logging.getLogger("pint.util").setLevel(logging.ERROR)  # unit redefinitions when pynxtools loads
    try:
        _check_wavelength_argument(args)
        return args.func(args)
    except XrdNexusMlError as err:
        print(f"xrd-nexus-ml: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
