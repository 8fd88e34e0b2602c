"""DPO-train a model with TRL, the loss(es) taken from the plugin registry.

Settings come from --config FILE.yaml, then flags. Besides the options
below, every trl.DPOConfig / transformers.TrainingArguments field is
accepted as --field-name VALUE (for example --beta 0.1 --loss-weights 0.8
0.2 --output-dir DIR --learning-rate 5e-6 --num-train-epochs 1
--max-length 512 --resume-from-checkpoint last); `dpo train
--help-trainer` lists them. See docs/training.md.
"""

from __future__ import annotations

from dpo_plugins.workflows.train import add_option_arguments
from ..console import show_info_logs

HELP = "DPO-train a model (TRL DPOTrainer with plugin losses)"
# The flags of trl.DPOConfig are parsed by transformers' HfArgumentParser in run().
ACCEPTS_EXTRA_ARGUMENTS = True


def add_arguments(parser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (flags override it)")
    parser.add_argument("--help-trainer", action="store_true",
                        help="list every DPOConfig / TrainingArguments field accepted as --field-name VALUE")
    add_option_arguments(parser)


def run(args) -> int:
    if args.help_trainer:
        from dpo_plugins.adapters.trl_config import print_trainer_help

        print_trainer_help("dpo train")
        return 0
    show_info_logs("train")
    from dpo_plugins.workflows.train import build_settings, train

    output_dir = train(build_settings(args, args.extra_arguments))
    print(f"trained model saved to {output_dir}")
    return 0

