"""Merge models as a mergekit configuration says, then check the merged checkpoint.

The configuration is mergekit's format verbatim; model references may be
local directories or the alias ``smollm2``, and ``merge_method`` any
registered merge method (``dpo plugins`` lists them, plugins' included).
Every problem in the configuration is reported before any weight is read.
The output directory appears only when the merge and every checkpoint check
succeeded; it carries the tokenizer, chat template and generation config
(copied from the base model, else the first model, where mergekit leaves
them out).
"""

from __future__ import annotations

from pathlib import Path

HELP = "merge models (mergekit's configuration format) and check the result"


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="mergekit configuration (YAML)")
    parser.add_argument("--output", required=True, type=Path, help="directory for the merged checkpoint")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.add_argument("--seed", type=int, default=None, help="random seed for randomized methods (dare_*, della, ...)")


def run(args) -> int:
    from dpo_plugins.workflows.merge import merge_checked
    from dpo_plugins.workflows.merge_config import load_merge_plan

    plan = load_merge_plan(args.config, output=args.output, replace=args.force)
    merge_checked(plan, args.output, lambda note: print(f"  {note}"), seed=args.seed)
    print(f"merged {len(plan.parents)} models with {plan.method.name!r} into {args.output}")
    return 0
