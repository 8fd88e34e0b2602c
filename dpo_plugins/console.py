"""What reaches the terminal: our own messages, not third-party noise.

Two kinds of noise reach a ``dpo`` user that they cannot act on:

- deprecation warnings raised inside libraries about the libraries' own
  defaults. TRL 1.16's ``DPOConfig`` defaults ``gradient_checkpointing``,
  which transformers 5 deprecated in favour of ``activation_checkpointing``,
  so every ``DPOConfig`` warns whatever the user wrote;
  :func:`silence_third_party_deprecations` (every ``dpo`` command) drops
  exactly those messages;
- per-load progress bars (transformers' "Loading weights", datasets'
  "Tokenizing ..."), several per command. ``dpo demo`` turns them off
  (:func:`dpo_plugins.adapters.progress.progress_bars_off`) while
  :func:`step_output` sends a step's own output to a log file.

Our own warnings go through :mod:`logging` (the ``dpo_plugins`` logger), so
they can be filtered, captured and redirected like any other log line;
:func:`show_info_logs` shows our INFO lines too, as ``dpo COMMAND: ...``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Iterator

# (message regex, category, module regex) of third-party warnings about third-party defaults
THIRD_PARTY_NOISE = (
    (r"`gradient_checkpointing(_kwargs)?` is deprecated and will be removed in v6", FutureWarning,
     r"transformers\.training_args"),
)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged (a redirect or a test's capture included)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the property above always wins
        pass


_HANDLER = _CurrentStderr()


def show_info_logs(command: str) -> None:
    """Our INFO lines (resolved losses, cache hits, health explanations) go to stderr as ``dpo COMMAND: ...``."""
    _HANDLER.setFormatter(logging.Formatter(f"dpo {command}: %(message)s"))
    log = logging.getLogger("dpo_plugins")
    if _HANDLER not in log.handlers:
        log.addHandler(_HANDLER)
    log.setLevel(logging.INFO)


def silence_third_party_deprecations() -> None:
    for message, category, module in THIRD_PARTY_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


@contextlib.contextmanager
def step_output(log_path: Path, keep_stderr: bool = False) -> Iterator[None]:
    """Send everything a step prints or logs to ``log_path`` (appended).

    With ``keep_stderr`` the terminal keeps stderr, where the trainer draws
    its one progress bar; our INFO lines still go to the log, and warnings
    of ours still reach the terminal.
    """
    log = logging.getLogger("dpo_plugins")
    with open(log_path, "a", encoding="utf-8") as stream, contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(stream))
        if not keep_stderr:
            stack.enter_context(contextlib.redirect_stderr(stream))
        to_file = logging.StreamHandler(stream)
        to_file.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
        log.addHandler(to_file)
        console_level = _HANDLER.level
        _HANDLER.setLevel(logging.WARNING)
        try:
            yield
        finally:
            _HANDLER.setLevel(console_level)
            log.removeHandler(to_file)

