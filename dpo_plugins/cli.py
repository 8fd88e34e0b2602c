"""The ``dpo`` command: parse, call, report.

Each subcommand lives in ``dpo_plugins/commands/<name>.py`` with ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Every subcommand accepts
``--plugin MOD`` (repeatable) to load extra plugin modules first. A command
that sets ``ACCEPTS_EXTRA_ARGUMENTS = True`` gets the arguments it did not
declare in ``args.extra_arguments`` (``dpo train`` hands them to
transformers' ``HfArgumentParser``); any other command rejects them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .console import silence_third_party_deprecations
from .errors import DpoPluginsError
from .plugins import load_module, load_plugins

COMMANDS = ("plugins", "convert", "validate", "train", "eval", "demo", "merge", "anneal")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MOD",
        help="import plugin module MOD before running (repeatable)",
    )
    parser = argparse.ArgumentParser(
        prog="dpo", description="Direct Preference Optimization with pluggable formats, losses, merges and judges."
    )
    parser.add_argument("--version", action="version", version=f"dpo-plugins {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        command = importlib.import_module(f"{__package__}.commands.{name}")
        sub = subcommands.add_parser(name, parents=[common], help=command.HELP, description=command.__doc__,
                                    allow_abbrev=False)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run, accepts_extra=getattr(command, "ACCEPTS_EXTRA_ARGUMENTS", False))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not args.accepts_extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra_arguments = extra
    silence_third_party_deprecations()
    try:
        load_plugins()
        for module in args.plugin:
            load_module(module)
        return args.run(args)
    except DpoPluginsError as error:
        print(f"dpo {args.command}: error: {error}", file=sys.stderr)
        return 1
