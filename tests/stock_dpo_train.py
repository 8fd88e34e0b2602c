"""Stock TRL's ``DPOTrainer`` on the very ``DPOConfig`` that ``dpo train ARGV`` builds.

The distributed parity tests launch this with ``accelerate launch`` next to
``dpo train`` itself, so "equals TRL under two processes" compares against
TRL's own trainer, not against our reading of it. The reference runs in
each step, on each process's share of the batch, as ``dpo train`` does
under several processes (``adapters.training.precompute_reference``).
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from datasets import Dataset
    from trl import DPOTrainer

    from dpo_plugins import cli
    from dpo_plugins.adapters.models import load_model, load_tokenizer
    from dpo_plugins.workflows.convert import read_trl_rows
    from dpo_plugins.workflows.train import build_settings

    args, extra = cli.build_parser().parse_known_args(["train", *argv])
    settings = build_settings(args, extra)
    config = settings.dpo
    config.precompute_ref_log_probs = False
    model = settings.options.model
    trainer = DPOTrainer(
        model=load_model(model),
        ref_model=load_model(model),
        args=config,
        train_dataset=Dataset.from_list(read_trl_rows(settings.options.data, settings.options.from_format)),
        processing_class=load_tokenizer(model),
    )
    trainer.train()
    trainer.save_state()


if __name__ == "__main__":
    main(sys.argv[1:])
