"""`xrd-nexus-ml`: the command line, the only place where flags exist.

Each module here registers the parsers of one subject and holds its `cmd_*` functions, which
turn flags into keyword arguments of library functions and print the result; no library
module sees an argparse `Namespace`. Library imports inside the `cmd_*` functions are kept
local for start-up time (`xrd-nexus-ml --help` does not load torch, pymatgen or bluesky).
"""

from xrd_nexus_ml.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
