"""``dpo merge``: merge a validated plan, complete the checkpoint, check it; nothing is left on a veto.

After mergekit writes the merge, ``complete_checkpoint`` (adapters) adds
whatever it left out (tokenizer, chat template, generation config) from the
donor model (``base_model`` if given, else the first model), or failing that
from the first other parent that has it. Validation lives in
:mod:`.merge_config`, the checks in :mod:`.checkpoint_checks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

from dpo_plugins.workflows.checkpoint_checks import require_checks_pass
from dpo_plugins.workflows.merge_config import MergePlan


def merge_into(plan: MergePlan, directory: Path, *, seed: Optional[int] = None) -> List[str]:
    """Merge into ``directory`` and complete the checkpoint; return what was added."""
    from dpo_plugins.adapters.checkpoint_files import complete_checkpoint
    from dpo_plugins.adapters.mergekit import run_merge

    run_merge(plan.config, Path(directory), plan.method, seed=seed)
    others = [path for path in plan.parents.values() if path != plan.donor]
    return complete_checkpoint(Path(directory), [plan.donor, *others])


def merge_checked(plan: MergePlan, output: Path, say: Callable[[str], None], *, seed: Optional[int] = None) -> None:
    """``dpo merge``: merge into ``output``, then run every check, telling ``say`` what was done.

    Both stages run in a temporary folder that becomes ``output`` only when
    every check passed: a vetoed merge leaves nothing behind.
    """
    from dpo_plugins.adapters.models import open_checkpoint
    from dpo_plugins.atomic import atomic_directory
    from dpo_plugins.workflows.stages import Stage, run_stages

    with atomic_directory(output, replace=True, command="dpo merge") as building:  # checked by plan_merge

        def merge(done):
            for note in merge_into(plan, building, seed=seed):
                say(note)
            return {"model": building}

        def check(done):
            for _, result in require_checks_pass(open_checkpoint(building, plan.dtype)):
                say(f"ok {result.name}: {result.message}")
            return {"model": building}

        run_stages("merge", [Stage("merge", merge), Stage("check", check)], building, config=plan.config, resume=False)
