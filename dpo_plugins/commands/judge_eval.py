"""Measure a judge against human labels: AlpacaEval's evaluator columns, next to the floors.

PAIRS are human-labelled preference pairs in any registered format (the
chosen answer is the human's preference). The judge sees every pair in both
orders; the table reports AlpacaEval's columns under AlpacaEval's names
(Human agreement with a 95% interval, Proba. prefer longer / lists / 1,
# parsed, time and price per 1000 examples) plus position consistency, for
the judge and for the floors `longest` and `random`. Answers are cached on
disk (--no-judge-cache to judge again). With --report DIR also metrics.json,
annotations.json (AlpacaEval's layout), report.md and a plot. Definitions,
and where they differ from AlpacaEval's: docs/evals.md.
"""

from __future__ import annotations

import json
import sys

from ..errors import DpoPluginsError

HELP = "a judge's agreement with human labels (AlpacaEval's evaluator columns), next to the floor judges"


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, metavar="PAIRS",
                        help="human-labelled pairs in any registered format (chosen = the human's preference)")
    parser.add_argument("--from", dest="from_format", metavar="F", help="the format of --data (default: auto-detected)")
    parser.add_argument("--judge", required=True, metavar="NAME", help="the judge to measure (see `dpo plugins`)")
    parser.add_argument("--judge-param", action="append", default=[], metavar="K=V",
                        help="judge parameter (repeatable); V is parsed as JSON when it can be")
    parser.add_argument("--max-pairs", type=int, metavar="N", help="judge only the first N pairs")
    parser.add_argument("--no-judge-cache", action="store_true",
                        help="call the judge on every pair instead of reading/writing cached answers")
    parser.add_argument("--prompt-price", type=float, metavar="USD",
                        help="dollars per million prompt tokens (with --completion-price: the Price column)")
    parser.add_argument("--completion-price", type=float, metavar="USD", help="dollars per million completion tokens")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--report", metavar="DIR", help="also write metrics.json, annotations.json, report.md and a plot")


def run(args) -> int:
    from dpo_plugins.atomic import check_output
    from dpo_plugins.evals.judge_agreement import judge_check, labelled_pairs
    from dpo_plugins.evals.judge_report import render_table, summary, write_judge_report
    from dpo_plugins.evals.judging import check_judge_params, public_params
    from dpo_plugins.workflows.convert import read_trl_rows

    from .eval import typed_judge_params

    params = typed_judge_params(args.judge, args.judge_param)  # before any model loads
    judge, _ = check_judge_params(args.judge, params)
    prices = _prices(args.prompt_price, args.completion_price)
    if args.max_pairs is not None and args.max_pairs < 1:
        raise DpoPluginsError(f"--max-pairs {args.max_pairs}: expected a positive number")
    if args.report:
        check_output(args.report, folder=True, inputs=[args.data])
    rows = read_trl_rows(args.data, args.from_format)[: args.max_pairs]
    prompts, chosen, rejected = labelled_pairs(rows, args.data)
    result = judge_check(args.judge, prompts, chosen, rejected, params, cache=not args.no_judge_cache, prices=prices)
    result.update(data=str(args.data), judge_params=public_params({**judge.params, **params}))
    if args.json:
        print(json.dumps(summary(result), allow_nan=False))
    else:
        print(render_table(result))
    if args.report:
        write_judge_report(args.report, result)
        print(f"report written to {args.report}", file=sys.stderr)
    return 0


def _prices(prompt_price, completion_price):
    from dpo_plugins.evals.judge_agreement import Prices

    if (prompt_price is None) != (completion_price is None):
        raise DpoPluginsError("--prompt-price and --completion-price go together (dollars per million tokens)")
    if prompt_price is None:
        return None
    if prompt_price < 0 or completion_price < 0:
        raise DpoPluginsError("--prompt-price and --completion-price: expected prices of zero or more")
    return Prices(prompt_price, completion_price)
