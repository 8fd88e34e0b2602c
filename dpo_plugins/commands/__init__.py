"""One module per ``dpo`` subcommand (see ``dpo_plugins.cli``)."""

from __future__ import annotations

import logging
import sys

_HANDLER = logging.StreamHandler(sys.stderr)


def show_info_logs(command: str) -> None:
    """Our INFO lines (resolved losses, cache hits, health explanations) go to stderr as ``dpo COMMAND: ...``."""
    _HANDLER.setFormatter(logging.Formatter(f"dpo {command}: %(message)s"))
    log = logging.getLogger("dpo_plugins")
    if _HANDLER not in log.handlers:
        log.addHandler(_HANDLER)
    log.setLevel(logging.INFO)
