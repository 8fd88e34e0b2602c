"""Run a workflow's stages in order: resumable, atomic, observable by plugins.

A workflow (``dpo merge``, ``dpo anneal``) is a list of :class:`Stage`. The
runner

- skips a stage whose outputs are complete: each finished stage leaves a
  marker ``OUTPUT_DIR/.stages/NAME.json`` with a fingerprint of its settings
  (and of every stage before it); a changed setting, a missing output or
  ``force`` reruns it, and once one stage runs every later stage runs too;
- calls the lifecycle hooks ``before_stage``, ``after_stage`` and
  ``on_stage_error`` (a plugin stops the run by returning a reason);
- on failure keeps earlier stages' outputs and raises :class:`StageFailed`,
  which says where the run stopped.

Stages write their outputs atomically (see :mod:`dpo_plugins.atomic`), so a
crash never leaves a half-written output that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from dpo_plugins.atomic import write_text
from dpo_plugins.errors import PluginError, StageFailed, WorkflowStopped
from dpo_plugins.plugins import load_plugins, pm, provider_of
from dpo_plugins.specs import StageInfo

Outputs = Mapping[str, Path]


@dataclass(frozen=True)
class Stage:
    """One step: ``run(previous)`` does the work and returns its outputs.

    ``previous`` maps each earlier stage's name to its outputs. ``settings``
    is whatever determines the result (a JSON-able value); it is
    fingerprinted to decide whether a finished stage is still up to date.
    """

    name: str
    run: Callable[[Dict[str, Outputs]], Outputs]
    settings: Any = None




def run_stages(
    workflow: str,
    stages: Sequence[Stage],
    output_dir: Path,
    *,
    config: Optional[Mapping[str, Any]] = None,
    force: bool = False,
    resume: bool = True,
    log: Callable[[str], None] = print,
) -> Dict[str, Outputs]:
    """Run ``stages`` in order; return every stage's outputs by name.

    With ``resume=False`` (a one-shot workflow whose caller writes
    atomically, like ``dpo merge``) no completion markers are read or
    written and every stage runs.
    """
    load_plugins()
    output_dir = Path(output_dir)
    names = tuple(stage.name for stage in stages)
    done: Dict[str, Outputs] = {}
    fingerprint = ""
    rerun = force or not resume
    for index, stage in enumerate(stages):
        position = f"{index + 1}/{len(stages)}"
        info = StageInfo(workflow, stage.name, index, names, output_dir, config or {})
        fingerprint = _fingerprint(fingerprint, stage)
        marker = output_dir / ".stages" / f"{stage.name}.json"
        complete = None if rerun else _complete_outputs(marker, fingerprint, output_dir)
        if complete is not None:
            log(f"[{position}] {stage.name}: complete, skipped (--force reruns it)")
            done[stage.name] = complete
            continue
        rerun = True
        if resume:
            marker.unlink(missing_ok=True)
        log(f"[{position}] {stage.name}")
        try:
            _ask_plugins("before_stage", f"before stage {stage.name!r}", stage=info)
            outputs = {key: Path(path) for key, path in stage.run(dict(done)).items()}
            if resume:
                _write_marker(marker, fingerprint, outputs, output_dir)
            done[stage.name] = outputs
            _ask_plugins("after_stage", f"after stage {stage.name!r}", stage=info, outputs=outputs)
        except Exception as error:
            _notify_error(info, error)
            kept = dict(done) if resume else None  # a stage that an after_stage hook stopped is complete
            raise StageFailed(workflow, stage.name, position, error, kept) from error
        except BaseException as error:  # KeyboardInterrupt: tell plugins, then stop as asked
            _notify_error(info, error)
            raise
    return done


def _fingerprint(previous: str, stage: Stage) -> str:
    settings = json.dumps([stage.name, stage.settings], sort_keys=True, default=str)
    return hashlib.sha256((previous + settings).encode()).hexdigest()


def _complete_outputs(marker: Path, fingerprint: str, output_dir: Path) -> Optional[Dict[str, Path]]:
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if recorded.get("fingerprint") != fingerprint:
        return None
    outputs = {key: output_dir / relative for key, relative in recorded.get("outputs", {}).items()}
    return outputs if all(path.exists() for path in outputs.values()) else None


def _write_marker(marker: Path, fingerprint: str, outputs: Outputs, output_dir: Path) -> None:
    relative = {key: os.path.relpath(path, output_dir) for key, path in outputs.items()}
    write_text(marker, json.dumps({"fingerprint": fingerprint, "outputs": relative}, indent=2) + "\n")


def _ask_plugins(hook_name: str, when: str, **kwargs) -> None:
    """Call each implementation; a non-empty string returned stops the run."""
    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
        provider = provider_of(impl.plugin)
        arguments = {name: kwargs[name] for name in impl.argnames}
        try:
            reason = impl.function(**arguments)
        except Exception as error:
            raise PluginError(f"plugin {provider} failed in {hook_name}(): {type(error).__name__}: {error}") from error
        if reason:
            raise WorkflowStopped(f"plugin {provider} stopped the run {when}: {reason}")


def _notify_error(info: StageInfo, error: BaseException) -> None:
    """Tell every plugin; one plugin's crash here must not hide the real error."""
    for impl in reversed(pm.hook.on_stage_error.get_hookimpls()):
        arguments = {name: {"stage": info, "error": error}[name] for name in impl.argnames}
        try:
            impl.function(**arguments)
        except Exception as hook_error:
            error.add_note(f"(plugin {provider_of(impl.plugin)} also failed in on_stage_error(): {hook_error})")
