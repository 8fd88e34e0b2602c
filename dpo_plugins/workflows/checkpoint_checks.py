"""Checks on a merged checkpoint, contributed by plugins.

Merges fail quietly: a checkpoint without its chat template or generation
config, a tokenizer with more tokens than embedding rows, weights in the
wrong dtype all load fine and go wrong later. After every merge each
plugin's ``check_merged_model`` hook (built-ins: default_plugins/checks.py)
inspects it; any failed check vetoes it.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from dpo_plugins.errors import CheckFailed
from dpo_plugins.plugins import records_from_each_plugin
from dpo_plugins.specs import Checkpoint, CheckResult

def run_checks(checkpoint: Checkpoint) -> List[Tuple[str, CheckResult]]:
    """Every plugin's checks, as ``(provider, result)``, in the order the
    plugins were loaded (built-ins first).

    Each hook implementation is called on its own so that an exception or a
    wrong return type names the plugin responsible.
    """
    return list(records_from_each_plugin("check_merged_model", CheckResult, checkpoint=checkpoint))


def require_checks_pass(checkpoint: Checkpoint, results: Optional[List[Tuple[str, CheckResult]]] = None
                        ) -> List[Tuple[str, CheckResult]]:
    """Run the checks (or take the ``results`` of a run); raise :class:`CheckFailed` if any failed."""
    results = run_checks(checkpoint) if results is None else results
    failures = [(provider, result) for provider, result in results if not result.passed]
    if failures:
        raise CheckFailed(checkpoint.path, failures)
    return results


def results_as_json(results: List[Tuple[str, CheckResult]]) -> list:
    return [
        {"name": r.name, "passed": r.passed, "message": r.message, "provider": provider}
        for provider, r in results
    ]
