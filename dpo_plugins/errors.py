"""Every exception the project raises on purpose, and the one "did you mean" helper.

All of them derive from :class:`DpoPluginsError`: a problem the user can fix.
The CLI prints its message (one line per problem) and exits non-zero, with
no traceback.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, List, Sequence, Tuple


class DpoPluginsError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every cleanup handler runs; the CLI exits 143."""


class PluginError(DpoPluginsError):
    """A plugin failed to load or raised inside a hook; the message names it."""


class DuplicateNameError(DpoPluginsError):
    """Two plugins registered the same name for the same kind."""


class UnknownNameError(DpoPluginsError, KeyError):
    """A name was asked for that no plugin registered."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0])


class RecordError(DpoPluginsError):
    """A row that cannot be read or written; ``problems`` (``records.Problem``) lists them all."""

    def __init__(self, problems: Iterable[Any]):
        self.problems = list(problems)
        super().__init__("; ".join(f"{p.path}: {p.message}" for p in self.problems))


class ConfigError(DpoPluginsError):
    """Every problem found in one configuration file, one ``PATH:LINE: key: message`` line each."""

    def __init__(self, problems: Iterable[str]):
        self.problems: List[str] = list(problems)
        super().__init__("\n".join(self.problems))


class CheckFailed(DpoPluginsError):
    """At least one check vetoed a merged checkpoint; the message lists them all."""

    def __init__(self, path, failures: List[Tuple[str, Any]]):
        self.failures = failures
        lines = [f"{path}: {len(failures)} checkpoint check(s) failed:"]
        lines += [f"  {result.name} ({provider}): {result.message}" for provider, result in failures]
        super().__init__("\n".join(lines))


class WorkflowStopped(DpoPluginsError):
    """A plugin's lifecycle hook asked to stop the run."""


class StageFailed(DpoPluginsError):
    """A workflow stage failed; earlier stages' outputs are intact."""

    def __init__(self, workflow: str, stage: str, position: str, error: BaseException, kept=None):
        self.stage = stage
        self.error = error
        detail = str(error) if isinstance(error, DpoPluginsError) else f"{type(error).__name__}: {error}"
        lines = [f"{workflow} stopped at stage {stage!r} ({position}): {detail}"]
        if kept is not None:
            for name, outputs in kept.items():
                paths = ", ".join(str(path) for path in outputs.values())
                lines.append(f"  stage {name!r} is complete and kept: {paths}")
            lines.append("  re-run the same command to resume: complete stages are skipped (--force reruns them)")
        super().__init__("\n".join(lines))


class HealthCheckError(DpoPluginsError):
    """Training stopped because a health check failed; the message names the cause."""


class SelfReferenceError(DpoPluginsError):
    """The policy was about to be scored against itself (every log-ratio 0)."""


def did_you_mean(name: Any, choices: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, else ``""``: appended to "unknown ..." messages."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
