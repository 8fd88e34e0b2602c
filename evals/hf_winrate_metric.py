"""Win-rate statistics through the ``evaluate`` library's metric interface.

Load it from this file (nothing is downloaded)::

    import evaluate
    from dpo_plugins.evals import hf_winrate_metric
    metric = evaluate.load(hf_winrate_metric.__file__)
    metric.compute(verdicts_policy_first=["a", "tie"], verdicts_baseline_first=["b", "a"],
                   policy_lengths=[120, 80], baseline_lengths=[100, 90])

Verdicts are a judge's per-prompt ``"a"`` / ``"b"`` / ``"tie"`` with the
policy shown first, then with the baseline shown first; the numbers are
exactly :func:`dpo_plugins.evals.stats.win_rate_metrics`.
"""

import datasets
import evaluate

from dpo_plugins.evals.stats import win_rate_metrics

_KWARGS_DESCRIPTION = """
Args:
    verdicts_policy_first (list of str): "a", "b" or "tie" per prompt, policy as A.
    verdicts_baseline_first (list of str): the same prompts with the baseline as A.
    policy_lengths, baseline_lengths (list of int): output lengths (characters) for length control.
Returns:
    wins, losses, ties, win_rate, win_rate_ci, win_rate_ci_method, AlpacaEval's n_total, n_wins, n_wins_base,
    n_draws, n_null, standard_error, discrete_win_rate, lc_win_rate, lc_standard_error, lc_method, lc_win_rate_note,
    position_consistency, avg_len_policy, avg_len_baseline (None instead of NaN).
"""


class WinRate(evaluate.Metric):
    """``evaluate.Metric`` wrapper around :func:`win_rate_metrics`."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Pairwise win rate judged in both orders (MT-Bench rule), Wilson CI, AlpacaEval-style LC.",
            citation="Zheng et al. 2023 (MT-Bench); Dubois et al. 2024 (length-controlled AlpacaEval)",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "verdicts_policy_first": datasets.Value("string"),
                "verdicts_baseline_first": datasets.Value("string"),
                "policy_lengths": datasets.Value("int64"),
                "baseline_lengths": datasets.Value("int64"),
            }),
        )

    def _compute(self, verdicts_policy_first, verdicts_baseline_first, policy_lengths, baseline_lengths):
        return win_rate_metrics(verdicts_policy_first, verdicts_baseline_first, policy_lengths, baseline_lengths)
