"""docs/cli.md, generated from the parsers themselves: `python -m xrd_nexus_ml.cli.reference > docs/cli.md`.
A test compares the file with this output, so the reference cannot drift from the code."""

from __future__ import annotations

import argparse
import os

from xrd_nexus_ml.cli.main import build_parser


def _commands(parser: argparse.ArgumentParser, prefix: str = ""):
    """(command path, parser) of every command, depth first, in the order the help lists them."""
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix} {name}".strip()
                has_children = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                if not has_children:
                    yield path, sub
                yield from _commands(sub, path)


def reference() -> str:
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # the help's line width, the same on every machine
    try:
        return _reference(build_parser())
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def _reference(parser: argparse.ArgumentParser) -> str:
    lines = ["# Command-line reference", "",
             "Generated from the parsers by `python -m xrd_nexus_ml.cli.reference > docs/cli.md`; do not edit.", "",
             "```text", parser.format_help().rstrip(), "```", ""]
    for path, sub in _commands(parser):
        lines += [f"## `xrd-nexus-ml {path}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference(), end="")
