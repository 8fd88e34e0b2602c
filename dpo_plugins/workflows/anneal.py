"""``dpo anneal``: merge -> check -> DPO ("anneal") -> evaluate vs parents -> report.

One YAML file drives it::

    output_dir: runs/anneal
    merge:            # a mergekit configuration, verbatim (aliases allowed)
      merge_method: slerp
      ...
    anneal:           # DPO settings, as for `dpo train` (data, loss, beta, lora, max_steps, ...)
      data: train.jsonl
      reference: merged     # or a parent as written under merge:, or a checkpoint path
    eval:
      data: heldout.jsonl   # held-out pairs

Which model is the DPO reference after a merge is a real choice (the merged
model keeps the anneal close to the merge; a parent pulls it back towards
that parent), so it is explicit: ``anneal.reference``, ``merged`` by
default. The same reference scores every model's implicit reward in the
evaluation.

The whole file is validated before anything heavy runs. Each stage writes
under ``output_dir`` and is skipped on a re-run once complete (see
:mod:`dpo_plugins.workflows.stages`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from dpo_plugins.errors import ConfigError, DpoPluginsError, did_you_mean
from dpo_plugins.evals.pipeline import MERGED
from dpo_plugins.workflows.checkpoint_checks import require_checks_pass, results_as_json, run_checks
from dpo_plugins.workflows.merge import merge_into
from dpo_plugins.workflows.merge_config import MergePlan, check_merge_section
from dpo_plugins.atomic import atomic_directory, write_text
from dpo_plugins.workflows.stages import Stage
from dpo_plugins.workflows.config import ConfigChecker, JsonPath, YamlFile, load_yaml

SECTIONS = ("output_dir", "merge", "anneal", "eval")


@dataclass(frozen=True)
class AnnealPlan:
    """A validated ``dpo anneal`` configuration."""

    source: YamlFile
    output_dir: Path
    merge: MergePlan
    anneal: Dict[str, Any]  # DPO settings, without ``reference``
    reference: str  # "merged", or the parent / path as written
    reference_path: Optional[Path]  # None when the reference is the merged model
    eval: Dict[str, Any] = field(default_factory=dict)

    @property
    def merged_dir(self) -> Path:
        return self.output_dir / "merged"

    @property
    def inputs(self) -> List[Any]:
        """Every file and model the run reads from outside its output folder: no output may touch them."""
        from dpo_plugins.workflows.merge_config import merge_inputs

        return [self.source.path, *merge_inputs(self.merge), self.reference_path,
                self.anneal.get("data"), self.anneal.get("eval_data"), self.eval.get("data")]


def load_anneal_plan(path) -> AnnealPlan:
    """Read and validate an anneal configuration; raise listing every problem."""
    source = load_yaml(path)
    checker = _AnnealChecker(source)
    plan = checker.check(source.data)
    if checker.problems:
        raise ConfigError(checker.sorted_problems())
    return plan


class _AnnealChecker(ConfigChecker):
    """Collects every problem in one anneal configuration."""

    def check(self, data: Any) -> Optional[AnnealPlan]:
        if not isinstance(data, dict):
            self.problem((), f"an anneal configuration must be a mapping with {', '.join(SECTIONS)}")
            return None
        for key in data:
            if key not in SECTIONS:
                hint = did_you_mean(str(key), SECTIONS)
                self.problem((key,), f"unknown section{hint} (sections: {', '.join(SECTIONS)})")
        for key in SECTIONS:
            if key not in data:
                self.problem((), f"{key} is required")
        output_dir = data.get("output_dir")
        if "output_dir" in data and not (isinstance(output_dir, str) and output_dir):
            self.problem(("output_dir",), "output_dir must be a directory path")
        merge_plan = None
        if "merge" in data:
            merge_plan, problems = check_merge_section(self.source, data["merge"], ("merge",))
            self.problems += problems
        anneal = self.section(data, "anneal")
        evaluation = self.section(data, "eval")
        reference, reference_path = self.reference(anneal, merge_plan)
        for name, section in (("anneal", anneal), ("eval", evaluation)):
            if name in data:
                self.data_file(section, (name,))
        self.eval_settings(evaluation)
        for key in ("model", "ref_model", "output_dir"):
            if key in anneal:
                self.problem(("anneal", key), "set by dpo anneal: the policy is the merged model, the reference "
                                              "is anneal.reference, the output is OUTPUT_DIR/annealed")
        if self.problems:
            return None
        plan = AnnealPlan(
            source=self.source,
            output_dir=Path(output_dir),
            merge=merge_plan,
            anneal={key: value for key, value in anneal.items() if key != "reference"},
            reference=reference,
            reference_path=reference_path,
            eval=dict(evaluation),
        )
        try:  # dpo train's own validation of the DPO settings, before anything heavy
            training_settings(plan, plan.merged_dir, plan.output_dir / "annealed")
        except DpoPluginsError as error:
            for line in str(error).splitlines():
                self.problems.append((self.source.line_of(("anneal",)), line))
        return plan

    def eval_settings(self, evaluation: dict) -> None:
        from dpo_plugins.evals.pipeline import EVAL_KEYS
        from dpo_plugins.plugins import get_judges

        for key in evaluation:
            if key not in EVAL_KEYS:
                hint = did_you_mean(str(key), EVAL_KEYS)
                self.problem(("eval", key), f"unknown eval setting{hint} (settings: {', '.join(EVAL_KEYS)})")
        for key in ("max_length", "batch_size", "max_new_tokens"):
            value = evaluation.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                self.problem(("eval", key), f"expected a positive integer, not {value!r}")
        judge = evaluation.get("judge")
        if judge is not None:
            judges = sorted(get_judges())
            if judge not in judges:
                hint = did_you_mean(str(judge), judges)
                self.problem(("eval", "judge"), f"unknown judge {judge!r}{hint} (available: {', '.join(judges) or 'none'})")
                return
            params = evaluation.get("judge_params") or {}
            if not isinstance(params, dict):
                self.problem(("eval", "judge_params"), "judge_params must be a mapping")
                return
            accepted = get_judges()[judge].params
            for key in params:
                if key not in accepted:
                    self.problem(("eval", "judge_params", key), f"judge {judge!r} has no parameter {key!r}; it "
                                 f"accepts: {', '.join(sorted(accepted)) or 'none'}")

    def section(self, data: dict, name: str) -> dict:
        value = data.get(name)
        if name in data and not isinstance(value, dict):
            self.problem((name,), f"{name} must be a mapping")
            return {}
        return value or {}

    def data_file(self, section: dict, path: JsonPath) -> None:
        """The pairs must exist and read cleanly now, not after a long merge and training."""
        from dpo_plugins.workflows.convert import read_trl_rows

        value = section.get("data")
        if value is None:
            self.problem(path, "data is required (a file of preference pairs)")
        elif not Path(str(value)).is_file():
            self.problem(path + ("data",), f"no such file: {value}")
        else:
            identical = None if path != ("anneal",) or section.get("allow_identical_pairs") else "allow_identical_pairs"
            try:
                read_trl_rows(str(value), section.get("from_format"), identical_pairs=identical)
            except DpoPluginsError as error:
                for line in str(error).splitlines():
                    self.problem(path + ("data",), line)

    def reference(self, anneal: dict, merge_plan: Optional[MergePlan]) -> Tuple[str, Optional[Path]]:
        """``merged`` (default), a parent as written under ``merge:``, or a checkpoint path."""
        from dpo_plugins.adapters.models import resolve_model

        value = anneal.get("reference", MERGED)
        if value == MERGED:
            return MERGED, None
        if not isinstance(value, str):
            self.problem(("anneal", "reference"), f"expected 'merged', a parent or a checkpoint path, not {value!r}")
            return MERGED, None
        if merge_plan is not None and value in merge_plan.parents:
            return value, merge_plan.parents[value]
        try:
            path = resolve_model(value)
        except DpoPluginsError as error:
            parents = (f"a parent ({', '.join(repr(name) for name in merge_plan.parents)})" if merge_plan
                       else "a parent named under merge:")
            self.problem(("anneal", "reference"), f"{error}; use 'merged', {parents} or a checkpoint path")
            return MERGED, None
        if not (path / "config.json").is_file():
            self.problem(("anneal", "reference"), f"{value!r} is not a model checkpoint: it has no config.json")
        return value, path.resolve()


def training_settings(plan: AnnealPlan, model: Path, output_dir: Path):
    """``dpo train``'s settings for the ``anneal:`` section, with the merged
    model as the policy and the stated reference; problems point into the
    anneal file."""
    import argparse

    from dpo_plugins.workflows.train import settings_from

    values = dict(plan.anneal, model=str(Path(model).resolve()), output_dir=str(output_dir))
    if plan.reference_path is not None:
        values["ref_model"] = str(plan.reference_path)
    return settings_from(values, lambda key: plan.source.location(("anneal", key)), argparse.Namespace(), [])


def merge_stage(plan: AnnealPlan, seed: Optional[int] = None) -> Stage:
    """Merge into OUTPUT_DIR/merged (atomically)."""

    def run(done):
        with atomic_directory(plan.merged_dir, replace=True) as building:
            for note in merge_into(plan.merge, building, seed=seed):
                print(f"  {note}")
        return {"model": plan.merged_dir}

    settings = {"config": plan.merge.config, "method": plan.merge.method.name, "seed": seed,
                "parents": {name: _stamp(path) for name, path in plan.merge.parents.items()}}
    return Stage("merge", run, settings)


def check_stage(plan: AnnealPlan) -> Stage:
    """Every plugin's checks on the merged model; OUTPUT_DIR/checks.json either way."""

    def run(done):
        from dpo_plugins.adapters.models import open_checkpoint

        checkpoint = open_checkpoint(done["merge"]["model"], plan.merge.dtype)
        results = run_checks(checkpoint)
        target = plan.output_dir / "checks.json"
        write_text(target, json.dumps(results_as_json(results), indent=2) + "\n")
        for provider, result in results:
            print(f"  {'ok' if result.passed else 'FAILED'} {result.name}: {result.message}")
        require_checks_pass(checkpoint, results)
        return {"checks": target}

    return Stage("check", run, {"dtype": plan.merge.dtype})


def anneal_stage(plan: AnnealPlan) -> Stage:
    """DPO-train the merged model against the stated reference, into OUTPUT_DIR/annealed."""

    def run(done):
        target = plan.output_dir / "annealed"
        with atomic_directory(target, replace=True) as building:
            from dpo_plugins.workflows.train import train

            train(training_settings(plan, done["merge"]["model"], building))
        return {"model": target}

    reference = _stamp(plan.reference_path) if plan.reference_path else plan.reference
    return Stage("anneal", run, {"anneal": plan.anneal, "reference": reference, "data": _stamp(plan.anneal["data"])})


def eval_stage(plan: AnnealPlan) -> Stage:
    """Score every parent, the merged and the annealed model on the held-out pairs."""

    def run(done):
        from dpo_plugins.evals.pipeline import compare_models
        from dpo_plugins.workflows.convert import read_trl_rows

        models = {name: ("parent", path) for name, path in plan.merge.parents.items()}
        models[MERGED] = ("merged", done["merge"]["model"])
        models["annealed"] = ("annealed", done["anneal"]["model"])
        reference_path = done["merge"]["model"] if plan.reference_path is None else plan.reference_path
        rows = read_trl_rows(plan.eval["data"], plan.eval.get("from_format"))
        evaluation = compare_models(models, plan.reference, reference_path, plan.eval, rows)
        target = plan.output_dir / "evaluation.json"
        write_text(target, json.dumps(evaluation, indent=2) + "\n")
        return {"evaluation": target}

    reference = _stamp(plan.reference_path) if plan.reference_path else plan.reference
    return Stage("eval", run, {"eval": plan.eval, "reference": reference, "data": _stamp(plan.eval["data"])})


def report_stage(plan: AnnealPlan) -> Stage:
    """metrics.json, report.md and plots in OUTPUT_DIR."""

    def run(done):
        from dpo_plugins.evals.comparison_report import write_report

        evaluation = json.loads(done["eval"]["evaluation"].read_text())
        return write_report(evaluation, plan.output_dir)

    return Stage("report", run)


def _stamp(path) -> List:
    """Size and modification time of a file, or of a checkpoint's weights: a
    parent retrained in place or an edited data file reruns what depends on it."""
    path = Path(path)
    files = sorted(p for pattern in ("*.safetensors", "*.bin") for p in path.glob(pattern)) if path.is_dir() else [path]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def anneal_stages(plan: AnnealPlan, seed: Optional[int] = None) -> List[Stage]:
    return [merge_stage(plan, seed), check_stage(plan), anneal_stage(plan), eval_stage(plan), report_stage(plan)]
