"""The ``dpo`` command: parse, call, report.

Each subcommand lives in ``dpo_plugins/commands/`` (:data:`COMMANDS`) with ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Every subcommand accepts
``--plugin MOD`` (repeatable) to load extra plugin modules first. A command
that sets ``ACCEPTS_EXTRA_ARGUMENTS = True`` gets the arguments it did not
declare in ``args.extra_arguments`` (``dpo train`` hands them to
transformers' ``HfArgumentParser``); any other command rejects them.

No Python traceback reaches the user: a :class:`DpoPluginsError` is its
message; SIGINT and SIGTERM stop the command with one line (exit 130 / 143)
after its temporary outputs are removed (they unwind like an exception); a
file-system error names the path; anything else is reported as a bug with
the plugin or source line it came from, and ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import traceback

from . import __version__
from .console import silence_third_party_deprecations
from .errors import DpoPluginsError, Terminated
from .plugins import load_module, load_plugins, plugin_of_file

# Subcommand -> its module in commands/: the subcommand's name, but for `plugins` (beside the host's plugins.py).
COMMANDS = {"plugins": "list_plugins", "convert": "convert", "validate": "validate", "train": "train", "iterate": "iterate",
            "eval": "eval", "winrate": "winrate", "judge-eval": "judge_eval", "demo": "demo", "merge": "merge",
            "anneal": "anneal"}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MOD",
        help="import plugin module MOD before running (repeatable)",
    )
    common.add_argument("--debug", action="store_true", help="show Python tracebacks of unexpected errors")
    parser = argparse.ArgumentParser(
        prog="dpo", description="Direct Preference Optimization with pluggable formats, losses, merges and judges."
    )
    parser.add_argument("--version", action="version", version=f"dpo-plugins {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        command = importlib.import_module(f"{__package__}.commands.{module}")
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
    args.main = main  # the entry point itself, for a command that runs other subcommands (the demo)
    silence_third_party_deprecations()
    in_main_thread = threading.current_thread() is threading.main_thread()  # signals can only be set there
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        load_plugins()
        for module in args.plugin:
            load_module(module)
        return args.run(args)
    except DpoPluginsError as error:
        return _fail(args, str(error))
    except KeyboardInterrupt as interrupt:
        code, name = (143, "SIGTERM") if isinstance(interrupt, Terminated) else (130, "SIGINT")
        print(f"dpo {args.command}: interrupted ({name}); unfinished outputs were removed", file=sys.stderr)
        return code
    except OSError as error:  # a disk that is full, read-only, gone ...
        where = f"{error.filename}: " if error.filename else ""
        return _fail(args, f"{where}{error.strerror or error}", error)
    except MemoryError as error:
        return _fail(args, "out of memory; try smaller inputs or batches", error)
    except Exception as error:  # noqa: BLE001 - the last resort: a bug, ours or a plugin's
        return _fail(args, f"unexpected {type(error).__name__}: {error} (in {_origin(error)}); this is a bug: "
                           "rerun with --debug for the traceback and report it", error)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum, frame):
    raise Terminated()


def _fail(args, message: str, error: BaseException | None = None) -> int:
    if error is not None and getattr(args, "debug", False):
        traceback.print_exception(error)
    print(f"dpo {args.command}: error: {message}", file=sys.stderr)
    return 1


def _origin(error: BaseException) -> str:
    """The plugin the error came from when one is in its traceback, else the innermost source line."""
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        plugin = plugin_of_file(frame.filename)
        if plugin:
            return f"plugin {plugin}, {frame.filename}:{frame.lineno}"
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "an unknown place"
