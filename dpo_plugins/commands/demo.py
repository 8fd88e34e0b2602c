"""Run the main job on the embedded defaults (SmolLM2-135M-Instruct).

Validates and converts a customer's Azure OpenAI preference file, DPO-trains
SmolLM2 with it, measures held-out reward accuracy (the implicit DPO reward
with its 95% interval, and reference-free before and after), judges the
tuned model against the base model, and writes ``report.md``,
``metrics.json``, plots and ``demo.log`` into ``--output``. The terminal
shows one line per step and a summary.
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
    print(f"dpo demo: every step's command and output go to {output / 'demo.log'}", flush=True)
    metrics = run_demo(output, args.main)
    print()
    for line in summary_lines(metrics):
        print(line)
    print(f"report: {output / 'report.md'}")
    return 0


def summary_lines(metrics: dict) -> list[str]:
    """The final summary: before/after, the interval, the win-rate."""
    heldout, win = metrics["heldout"], metrics["win_rate"]
    intervals = heldout["with_interval"]

    def accuracy(entry):
        low, high = entry["wilson_95"]
        return f"{entry['accuracy']:.1%} (95% CI {low:.1%}-{high:.1%})"

    ci = win["win_rate_ci"] or [None, None]
    win_ci = f"95% CI {ci[0]:.1%}-{ci[1]:.1%}" if ci[0] is not None else "no CI"
    return [
        f"held-out implicit DPO reward accuracy: {accuracy(intervals['implicit_after'])} on "
        f"{heldout['n_pairs']} pairs never trained on (base model: every margin 0)",
        f"held-out {heldout['reward_mode']} reward accuracy: {accuracy(intervals['before'])} before, "
        f"{accuracy(intervals['after'])} after",
        f"judged vs base: {win['wins']}W/{win['ties']}T/{win['losses']}L, {win['discrete_win_rate']:.1%} with ties "
        f"half ({win_ci}); mean preference {win['win_rate']:.1%}; judge's first-position preference "
        f"{win['first_position_rate']:.1%} (small self-judge: see the report's caveat)",
        *judge_check_lines(metrics.get("judge_check")),
        f"total {metrics['total_s']:.0f}s",
    ]


def judge_check_lines(check) -> list[str]:
    """The judge's agreement with the held-out human labels, and the floors', one line."""
    if not check:
        return []
    from dpo_plugins.evals.report import agreement_text

    judge, annotators = check["judge"], check["annotators"]
    floors = ", ".join(f"{name} {agreement_text(columns)}" for name, columns in annotators.items() if name != judge)
    return [f"judge {judge} vs the {check['n_pairs']} held-out human labels: human agreement "
            f"{agreement_text(annotators[judge])}; floors: {floors}"]
