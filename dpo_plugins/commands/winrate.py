"""Recompute win-rate statistics from judgments, without running any model.

JUDGMENTS is AlpacaEval's annotations.json (output_1 the baseline, output_2
the model, preference in [1, 2], 1.5 a draw, null when the annotator
failed) or the generations.jsonl that `dpo eval --judge` writes. Prints
AlpacaEval's numbers: win_rate (mean of preference - 1) with its standard
error, discrete_win_rate, the counts, null preferences (counted, in no
rate), and a length-controlled win rate whose lc_method names the GLM:
AlpacaEval 2's length_controlled_v1 with --instruction-difficulty
df_gamed.csv, length_controlled_noreg with instruction_difficulty.csv,
length_controlled_minimal (not AlpacaEval 2's LC) without. Definitions:
docs/evals.md.
"""

from __future__ import annotations

import json

HELP = "win rate, standard error and length-controlled win rate from judgments (AlpacaEval's definitions)"
KEYS = ("n_total", "n_wins", "n_wins_base", "n_draws", "n_null", "win_rate", "standard_error", "discrete_win_rate",
        "lc_win_rate", "lc_standard_error", "lc_method", "lc_win_rate_note")


def add_arguments(parser) -> None:
    parser.add_argument("judgments", metavar="JUDGMENTS", help="AlpacaEval annotations.json or dpo eval's generations.jsonl")
    parser.add_argument("--instruction-difficulty", metavar="FILE",
                        help="AlpacaEval's df_gamed.csv (for AlpacaEval 2's LC) or instruction_difficulty.csv")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from dpo_plugins.evals.annotations import read_judgments
    from dpo_plugins.evals.length_control import read_difficulty_table
    from dpo_plugins.evals.stats import alpaca_eval_metrics

    judgments = read_judgments(args.judgments)
    table = read_difficulty_table(args.instruction_difficulty) if args.instruction_difficulty else None
    baseline = next((j.generator_1 for j in judgments if j.generator_1 is not None), None)
    model = next((j.generator_2 for j in judgments if j.generator_2 is not None), None)
    metrics = alpaca_eval_metrics([j.preference for j in judgments], [len(j.output_2) for j in judgments],
                                  [len(j.output_1) for j in judgments], table, same_generator=model is not None and model == baseline)
    summary = {key: metrics[key] for key in KEYS}
    if args.json:
        print(json.dumps(summary, allow_nan=False))
        return 0
    for key in KEYS:
        value = summary[key]
        shown = f"{100 * value:.2f}%" if isinstance(value, float) and key.endswith(("rate", "error")) else value
        print(f"{key:18} {shown}")
    return 0
