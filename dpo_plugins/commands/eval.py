"""Evaluate a policy: reward accuracy on held-out pairs and, with a judge, win-rate.

Reward accuracy scores every pair with the implicit DPO reward (policy vs
``--ref``), tokenized exactly as TRL's DPOTrainer does (or, with
``--tokenization rewardbench``, exactly as reward-bench's run_dpo.py does);
with a ``subset`` on every row it is also reported per subset. ``--judge`` adds a
win-rate of the policy's generations against a baseline's (default: the
reference) on the pairs' distinct prompts, judged in both orders. A PEFT
adapter directory works as ``--model``; without ``--ref`` its base model is
the reference, as in TRL. Writes
``metrics.json``, ``pairs.jsonl``, ``report.md`` and PNG plots into
``--report DIR`` (with ``--judge`` also ``generations.jsonl`` and
AlpacaEval's ``model_outputs.json`` and ``annotations.json``). Definitions and biases: docs/evals.md.
"""

from __future__ import annotations

import json
import logging
import sys

from ..atomic import check_output
from ..option_checks import non_negative_int, positive_float, positive_int, probability
from ..errors import DpoPluginsError
from ..params import parse_key_values, typed_like
from ..workflows.convert import read_trl_rows
from ..console import show_info_logs

HELP = "reward accuracy and win-rate of a policy, with a report"
_log = logging.getLogger("dpo_plugins.eval")


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, metavar="M", help="policy: a local checkpoint or 'smollm2'")
    parser.add_argument("--ref", metavar="R", help="reference model the policy was trained from "
                        "(default for a PEFT adapter: its base model)")
    parser.add_argument("--data", required=True, metavar="PAIRS",
                        help="held-out preference pairs, in any registered format (see `dpo plugins`)")
    parser.add_argument("--from", dest="from_format", metavar="F", help="the format of --data (default: auto-detected)")
    parser.add_argument("--report", required=True, metavar="DIR", help="directory for the report files")
    parser.add_argument("--reward-mode", choices=("dpo", "ref-free-sum", "ref-free-mean", "ref-free-norm"),
                        help="default: dpo with --ref, ref-free-sum without (RewardBench's ref-free sum / avg / norm)")
    parser.add_argument("--tokenization", choices=("trl", "rewardbench"), default="trl",
                        help="trl: as DPOTrainer tokenized training (default); rewardbench: exactly as reward-bench "
                        "0.1.4's run_dpo.py, its own truncation (2048 / prompt 128) replacing --max-length")
    parser.add_argument("--allow-self-reference", action="store_true",
                        help="allow a reference with the same weights as the policy (every log-ratio is 0)")
    parser.add_argument("--max-length", type=non_negative_int, default=1024,
                        help="TRL's max_length (default 1024); 0 = none")
    parser.add_argument("--truncation-mode", choices=("keep_start", "keep_end"), default="keep_start")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--forward", choices=("packed", "plain"), default="packed",
                        help="packed: prefix-shared pairs, no padding (default); plain: two padded rows per pair, "
                        "RewardBench's way (same numbers, slower)")
    parser.add_argument("--no-ref-cache", action="store_true",
                        help="recompute the reference log-probs instead of reading/writing the on-disk cache")
    parser.add_argument("--judge", metavar="NAME", help="judge plugin for the win-rate (see `dpo plugins`)")
    parser.add_argument("--judge-param", action="append", default=[], metavar="K=V",
                        help="judge parameter (repeatable); V is parsed as JSON when it can be")
    parser.add_argument("--judge-check", metavar="PAIRS", help="human-labelled pairs (any format; chosen = the human's "
                        "preference) to measure the judge on: its agreement, next to the floors, goes with the win-rate")
    parser.add_argument("--judge-check-max-pairs", type=positive_int, metavar="N",
                        help="measure the judge on only the first N pairs of --judge-check")
    parser.add_argument("--no-judge-cache", action="store_true",
                        help="call the judge on every comparison instead of reading/writing cached answers")
    parser.add_argument("--baseline", metavar="B", help="baseline model for the win-rate (default: --ref)")
    parser.add_argument("--policy-outputs", metavar="FILE", help="JSONL {prompt, output}: use instead of generating")
    parser.add_argument("--baseline-outputs", metavar="FILE", help="JSONL {prompt, output}: use instead of generating")
    parser.add_argument("--max-prompts", type=positive_int, help="judge at most this many distinct prompts")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=positive_float, default=1.0)
    parser.add_argument("--top-p", type=probability, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from dpo_plugins.adapters.distributed import is_main_process
    from dpo_plugins.evals.pipeline import EvalRequest, adapter_base, run_eval
    from dpo_plugins.formats.rewardbench import subsets_of

    show_info_logs("eval")
    from dpo_plugins.adapters.models import model_input_paths

    inputs = [args.data, args.judge_check, args.policy_outputs, args.baseline_outputs,
              *(path for model in (args.model, args.ref, args.baseline) for path in model_input_paths(model))]
    check_output(args.report, folder=True, inputs=[path for path in inputs if path])  # before minutes of scoring
    if args.ref is None and (base := adapter_base(args.model)) is not None:
        args.ref = base
        _log.info("%s is a PEFT adapter; its base model %s is the reference", args.model, base)
    if args.judge is None and (args.baseline or args.policy_outputs or args.baseline_outputs or args.judge_check):
        raise DpoPluginsError("--baseline, --policy-outputs, --baseline-outputs and --judge-check need --judge")
    if args.judge_check_max_pairs and not args.judge_check:
        raise DpoPluginsError("--judge-check-max-pairs needs --judge-check")
    judge_params = typed_judge_params(args.judge, args.judge_param)  # before any model loads
    judge_check_pairs = None
    if args.judge_check:
        from dpo_plugins.evals.judge_agreement import labelled_pairs

        judge_check_pairs = labelled_pairs(read_trl_rows(args.judge_check)[: args.judge_check_max_pairs],
                                           args.judge_check)
    request = EvalRequest(
        model=args.model, ref=args.ref, rows=read_trl_rows(args.data, args.from_format), data=args.data,
        reward_mode=args.reward_mode or ("dpo" if args.ref else "ref-free-sum"),
        allow_self_reference=args.allow_self_reference, max_length=args.max_length or None,
        truncation_mode=args.truncation_mode, tokenization=args.tokenization, subsets=subsets_of(args.data),
        batch_size=args.batch_size, forward=args.forward,
        ref_cache=not args.no_ref_cache, judge=args.judge,
        judge_params=judge_params, judge_cache=not args.no_judge_cache, judge_check=args.judge_check,
        judge_check_pairs=judge_check_pairs, baseline=args.baseline or args.ref,
        policy_outputs=args.policy_outputs, baseline_outputs=args.baseline_outputs, max_prompts=args.max_prompts,
        generation={"max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample,
                    "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed},
        progress=not args.no_progress,
    )
    if args.ref is None and args.reward_mode is None:
        _log.info("no --ref, so reward accuracy is reference-free (ref-free-sum)")
    metrics = run_eval(request, args.report)
    if not is_main_process():  # under accelerate launch one process reports
        return 0
    summary = {k: metrics.get(k) for k in ("n_pairs", "reward_accuracy", "reward_ties", "mean_margin", "tokenization",
                                         "subsets", "win_rate", "standard_error", "win_rate_ci", "lc_win_rate",
                                         "lc_method") if k in metrics}
    if "judge_check" in metrics:
        summary["judge_human_agreement"] = {name: {k: columns[k] for k in ("Human agreement", "Human agreement 95% CI")}
                                            for name, columns in metrics["judge_check"]["annotators"].items()}
    print(json.dumps(summary))
    print(f"report written to {args.report}", file=sys.stderr)
    return 0


def typed_judge_params(judge: str | None, items) -> dict:
    """``--judge-param`` values, checked against the judge's declared parameters (an unknown key is an error
    naming the ones it accepts) and typed like their defaults, as ``--loss-param`` values are."""
    given = parse_key_values(items, "--judge-param")
    if not judge:
        return given
    from dpo_plugins.evals.judging import check_judge_params

    spec, _ = check_judge_params(judge, given)
    try:
        return {key: typed_like(spec.params[key], value) for key, value in given.items()}
    except ValueError as error:
        raise DpoPluginsError(f"--judge-param of {judge}: {error}") from None
