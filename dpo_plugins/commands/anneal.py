"""Merge, check, DPO-anneal the merged model, and compare it with its parents.

One YAML file with four sections: `merge:` (a mergekit configuration,
verbatim), `anneal:` (DPO settings as for `dpo train`, plus `reference:
merged | PARENT | PATH`, merged by default), `eval:` (held-out pairs, an
optional judge) and `output_dir:`. The whole file is validated before
anything heavy runs. Stages: merge, check, anneal, eval, report; a re-run
skips complete stages (--force reruns them), and a failed stage keeps the
earlier stages' outputs. See docs/merge-anneal.md.
"""

from __future__ import annotations

from pathlib import Path

HELP = "merge -> check -> DPO anneal -> evaluate against the parents -> report"


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="anneal configuration (YAML)")
    parser.add_argument("--force", action="store_true", help="rerun every stage, even complete ones")
    parser.add_argument("--seed", type=int, default=None, help="random seed for randomized merge methods")


def run(args) -> int:
    from dpo_plugins.atomic import claim_folder
    from dpo_plugins.workflows.anneal import anneal_stages, load_anneal_plan
    from dpo_plugins.workflows.stages import run_stages

    plan = load_anneal_plan(args.config)
    claim_folder(plan.output_dir, "dpo anneal", inputs=plan.inputs)  # its stages resume from what is there
    done = run_stages("anneal", anneal_stages(plan, seed=args.seed), plan.output_dir,
                      config=plan.source.data, force=args.force)
    print(f"report: {done['report']['report']}")
    return 0
