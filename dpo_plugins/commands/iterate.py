"""Online (iterative) DPO: sample K answers per prompt from the policy, judge them, pair them, train, repeat.

Each round samples with the current policy, scores the samples with a judge
plugin (round-robin or against the first sample) or with DICE (the policy's
implicit reward against its reference), builds pairs with a pair-builder
plugin (best-vs-worst by default; ties dropped and counted), trains one
`dpo train` run on them, evaluates on --eval-data and goes on from the
round's policy. Settings come from --config FILE.yaml (our options at the
top, dpo train's under `train:`), then flags; every DPOConfig field is
accepted as --field-name VALUE, as in `dpo train`. A killed run resumes when
the same command is run again. See docs/iterate.md.
"""

from __future__ import annotations

from dpo_plugins.workflows.iterate import OPTION_FIELDS, TRAIN_FLAG_EXCLUDE
from dpo_plugins.workflows.train import add_option_arguments
from ..console import show_info_logs

HELP = "online DPO in rounds: sample, judge, pair, train, evaluate"
ACCEPTS_EXTRA_ARGUMENTS = True  # DPOConfig's flags, as in dpo train


def add_arguments(parser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (flags override it)")
    add_option_arguments(parser, OPTION_FIELDS)
    add_option_arguments(parser, exclude=TRAIN_FLAG_EXCLUDE)  # dpo train's own: --loss, --loss-param, ...


def run(args) -> int:
    show_info_logs("iterate")
    from dpo_plugins.workflows.iterate import build_settings, iterate

    out = iterate(build_settings(args, args.extra_arguments))
    print(f"report written to {out / 'report.md'}")
    return 0
