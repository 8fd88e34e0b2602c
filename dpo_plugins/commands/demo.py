"""Run the main job on the embedded defaults (SmolLM2-135M-Instruct).

Validates and converts a customer's Azure OpenAI preference file, DPO-trains
a LoRA adapter on SmolLM2 with it, measures held-out reward accuracy before
and after, judges the tuned model against the base model, and writes
``report.md``, ``metrics.json`` and plots into ``--output``.
"""

from __future__ import annotations

from pathlib import Path

HELP = "the main job end to end on the embedded defaults"


def add_arguments(parser) -> None:
    parser.add_argument("--output", type=Path, default=Path("dpo-demo"), metavar="DIR",
                        help="folder for every output (default ./dpo-demo; an earlier demo's is replaced)")


def run(args) -> int:
    from dpo_plugins.workflows.demo import fresh_output_dir, run_demo

    output = fresh_output_dir(args.output)
    metrics = run_demo(output, args.main)
    heldout, win = metrics["heldout"], metrics["win_rate"]
    print(f"\nheld-out reward accuracy ({heldout['reward_mode']}): {heldout['reward_accuracy_before']:.1%} before, "
          f"{heldout['reward_accuracy_after']:.1%} after; implicit DPO reward accuracy "
          f"{heldout['implicit_reward_accuracy_after']:.1%}")
    print(f"win-rate vs base: {win['win_rate']:.1%} ({win['wins']}W/{win['ties']}T/{win['losses']}L, "
          f"small self-judge: see the report's caveat)")
    print(f"total {metrics['total_s']:.0f}s; report: {output / 'report.md'}")
    return 0
