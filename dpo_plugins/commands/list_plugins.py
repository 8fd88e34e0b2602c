"""List every registered plugin record: its name, kind and provider."""

from __future__ import annotations

import json

from ..plugins import KINDS, registrations

HELP = "list registered formats, losses, merge methods and judges"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list of {name, kind, provider}")


def plugin_rows() -> list[dict]:
    return [
        {"name": name, "kind": kind, "provider": registration.provider}
        for kind in KINDS
        for name, registration in sorted(registrations(kind).items())
    ]


def run(args) -> int:
    rows = plugin_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    widths = {key: max([len(key)] + [len(row[key]) for row in rows]) for key in ("name", "kind")}
    print(f"{'name':<{widths['name']}}  {'kind':<{widths['kind']}}  provider")
    for row in rows:
        print(f"{row['name']:<{widths['name']}}  {row['kind']:<{widths['kind']}}  {row['provider']}")
    return 0
