"""NeXus commands: `nexus validate`, `nexus recover`, `export` (the SciCat record of a file)."""

from __future__ import annotations

import json
from pathlib import Path


def cmd_nexus_validate(args) -> int:
    """Print what is missing or wrong; exit 1 if any file is invalid."""
    from nexus_definitions import layout  # local: start-up time
    from nexus_definitions.validate import validate_file

    reports = [validate_file(name, args.definition or layout.NXDL_PATH, entry=args.entry,
                             pynxtools=not args.no_pynxtools) for name in args.files]
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        for report in reports:
            print(report.format(warnings=True))
    return 0 if all(r.ok for r in reports) else 1


def cmd_nexus_recover(args) -> int:
    """Mark files whose writer died as closed (h5clear -s)."""
    from nexus_definitions.writer import clear_consistency_flags  # local: start-up time

    for name in args.files:
        changed = clear_consistency_flags(name)
        print(f"{name}: {'marked closed' if changed else 'already closed'}")
    return 0


def overrides_from(items: list[str] | None) -> dict:
    """--set KEY=VALUE ... as a dict; a value that parses as JSON is taken as such."""
    from nexus_definitions.export import ExportError  # local: start-up time

    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ExportError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def cmd_export(args) -> int:
    from nexus_definitions.export import ExportError, export_record  # local: start-up time

    record = export_record(args.file, entry=args.entry, overrides=overrides_from(args.set))
    text = json.dumps(record, indent=2)
    if args.out == "-":
        print(text)
        return 0
    target = Path(args.out) if args.out else Path(args.file).with_suffix(".scicat.json")
    if target.exists() and not args.overwrite:
        raise ExportError(f"{target}: exists; pass --overwrite to replace it")
    target.write_text(text + "\n")
    print(f"wrote {target}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("nexus", help="check NeXus files against NXxrd_ml; recover files whose writer died")
    nx = p.add_subparsers(dest="nexus_command", required=True, metavar="WHAT")
    v = nx.add_parser("validate", help="structure and units, nexusformat and pynxtools checks against NXxrd_ml")
    v.add_argument("files", nargs="+")
    v.add_argument("--definition", default=None, help="another NXDL file (default: nexus_definitions/NXxrd_ml)")
    v.add_argument("--entry", default=None)
    v.add_argument("--no-pynxtools", action="store_true")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_nexus_validate)
    r = nx.add_parser("recover", help="mark files left open by a crashed writer as closed (like h5clear -s)")
    r.add_argument("files", nargs="+")
    r.set_defaults(func=cmd_nexus_recover)

    p = sub.add_parser("export", help="write the SciCat dataset record (JSON) of a NeXus file")
    p.add_argument("file")
    p.add_argument("--out", default=None, help="default FILE.scicat.json; '-' for standard output")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (owner, pid, ...)")
    p.add_argument("--entry", default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)
