"""How often an AlpacaEval annotator, run by a local model, agrees with HH-RLHF's human labels.

The last ``--pairs`` pairs of the demo's data (its held-out pairs come from the end of the same
file) are judged in both orders by the ``alpaca-eval`` judge with ``--local-model`` (default
SmolLM2-135M-Instruct); the human's chosen answer plays the policy, the rejected one the
baseline. Agreement: the judge's preference for the chosen answer, averaged over the two orders,
is above one half (exactly one half counts half). Printed next to it, on the same pairs: the
``longest`` floor (the chosen answer is the longer one) and the judge's position statistics.

    python -m benchmarks.alpaca_eval_judge_hh --pairs 20
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--annotator", default="weighted_alpaca_eval_gpt4_turbo")
    parser.add_argument("--local-model", default="smollm2")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args(argv)

    from dpo_plugins.evals.stats import wilson_interval
    from dpo_plugins.evals.judging import judge_both_orders
    from dpo_plugins.workflows.convert import read_trl_rows

    path = resources.files("dpo_plugins") / "data" / "demo" / "hh-harmless-azure.jsonl"
    rows = read_trl_rows(str(path), None)[-args.pairs:]
    prompts = [r["prompt"] for r in rows]
    chosen = [r["chosen"][-1]["content"] for r in rows]
    rejected = [r["rejected"][-1]["content"] for r in rows]
    start, cpu_start = time.perf_counter(), time.process_time()
    metrics, judged = judge_both_orders("alpaca-eval", prompts, chosen, rejected,
                                        {"annotator": args.annotator, "local_model": args.local_model})
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    agree = [1.0 if r["preference"] > 1.5 else 0.5 if r["preference"] == 1.5 else 0.0 for r in judged]
    per_order = [p > 0.5 for r in judged for p in (r["p_first_better_policy_first"], 1 - r["p_first_better_baseline_first"])]
    result = {
        "pairs": len(rows), "annotator": args.annotator, "local_model": args.local_model,
        "human_agreement": sum(agree) / len(agree),
        "human_agreement_ci95_wilson": wilson_interval(agree.count(1.0), agree.count(0.0), agree.count(0.5)),
        "human_agreement_single_order": sum(per_order) / len(per_order),
        "longest_floor": sum(len(c) > len(r) for c, r in zip(chosen, rejected)) / len(rows),
        "first_position_rate": metrics["first_position_rate"],
        "position_consistency": metrics["position_consistency"],
        "judge_calls": 2 * len(rows), "wall_seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
        "seconds_per_1000_examples": round(seconds / (2 * len(rows)) * 1000, 1),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
