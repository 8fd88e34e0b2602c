"""Win-rate statistics: MT-Bench's two orders, the Wilson interval, AlpacaEval's numbers through win_rate_metrics."""

from __future__ import annotations

import math

import pytest

from dpo_plugins.evals.stats import (
    combine_orders,
    combined_preferences,
    position_consistency,
    wilson_interval,
    win_rate,
    win_rate_metrics,
)


def test_lc_win_rate_is_alpaca_evals_minimal_glm_and_says_so():
    """Verbose answers win more often; at equal lengths the model is worse than its raw rate says.

    Exactness against AlpacaEval's own function: tests/test_alpaca_eval.py.
    """
    import random

    rng = random.Random(7)
    first, swapped, policy, baseline = [], [], [], []
    for _ in range(60):
        policy_len, baseline_len = rng.randint(20, 400), rng.randint(20, 400)
        p_win = 1 / (1 + math.exp(-(0.2 + 1.5 * math.tanh((policy_len - baseline_len) / 150))))
        verdict = "a" if rng.random() < p_win else "b"
        first.append(verdict)
        swapped.append({"a": "b", "b": "a"}[verdict])
        policy.append(policy_len)
        baseline.append(baseline_len)
    metrics = win_rate_metrics(first, swapped, policy, baseline)
    assert metrics["lc_method"] == "length_controlled_minimal"
    assert 0 < metrics["lc_win_rate"] < 1 and metrics["lc_win_rate"] != metrics["win_rate"]
    assert "length_controlled_minimal GLM on 60 preferences" in metrics["lc_win_rate_note"]


def test_probabilities_average_over_the_orders():
    # P(a better) in each order: policy first 0.9, baseline first 0.3 (so 0.7 for the policy).
    assert combined_preferences([0.9, "a", "a"], [0.3, "b", "a"]) == [pytest.approx(1.8), 2.0, 1.5]
    metrics = win_rate_metrics([0.9, 0.2], [0.3, 0.6], [10, 20], [5, 5])
    assert metrics["win_rate"] == pytest.approx(((0.9 + 0.7) / 2 + (0.2 + 0.4) / 2) / 2)
    assert (metrics["wins"], metrics["losses"], metrics["ties"]) == (1, 1, 0)  # verdicts: (a, b) and (b, a)
    assert metrics["discrete_win_rate"] == 0.5 and metrics["standard_error"] is not None


def test_wilson_interval_matches_textbook_values():
    # 60 wins of 100: Wilson 95% interval (0.5020, 0.6906), e.g. statsmodels proportion_confint(method="wilson").
    low, high = wilson_interval(60, 40, 0)
    assert (round(low, 4), round(high, 4)) == (0.5020, 0.6906)
    assert wilson_interval(50, 30, 20) == wilson_interval(60, 40, 0)  # ties count half
    assert wilson_interval(0, 0, 0) is None and win_rate(0, 0, 0) is None
    low, high = wilson_interval(5, 0, 0)
    assert 0 < low < 1 and high == 1.0


def test_both_orders_combine_as_mt_bench():
    first = ["a", "a", "b", "b", "tie", "a"]
    swapped = ["b", "a", "a", "tie", "tie", "tie"]
    assert combine_orders(first, swapped) == ["win", "tie", "loss", "tie", "tie", "tie"]
    assert position_consistency(first, swapped) == 3 / 6
    metrics = win_rate_metrics(first, swapped, [10, 20, 30, 40, 50, 60], [5] * 6)
    assert (metrics["wins"], metrics["losses"], metrics["ties"]) == (1, 1, 4)
    assert metrics["win_rate"] == 0.5 and metrics["avg_len_policy"] == 35 and metrics["avg_len_baseline"] == 5
    assert metrics["lc_win_rate"] is None and "fewer than 20" in metrics["lc_win_rate_note"]
    assert metrics["discrete_win_rate"] == 0.5 and metrics["n_draws"] == 4


def test_a_scoring_judges_two_orders_average_into_one_preference():
    from dpo_plugins.evals.stats import PREFERENCE_TIE_EPSILON, combined_preferences, outcomes_of

    first, swapped = [0.9, 0.6, 0.3, 0.7], [0.7, 0.6, 0.8, 0.3]  # P(first shown better), policy first / baseline first
    assert combined_preferences(first, swapped) == pytest.approx([1.6, 1.5, 1.25, 1.7])  # AlpacaEval's 1..2 scale
    assert outcomes_of(first, swapped) == ["win", "tie", "loss", "win"]
    assert outcomes_of([0.5 + 3 * PREFERENCE_TIE_EPSILON], [0.5]) == ["win"]
    metrics = win_rate_metrics(first, swapped, [10, 20, 30, 40], [5] * 4)
    assert (metrics["wins"], metrics["losses"], metrics["ties"]) == (2, 1, 1)
    assert metrics["win_rate"] == pytest.approx(sum([0.6, 0.5, 0.25, 0.7]) / 4)  # the mean preference
    assert metrics["first_position_rate"] == pytest.approx(sum(first + swapped) / 8)  # 0.6125: leans to slot A
    assert metrics["position_consistency"] == 2 / 4  # b/a and a/b: the last two prompts only
    verdicts = win_rate_metrics(["a", "a"], ["a", "b"], [1, 1], [1, 1])
    assert verdicts["first_position_rate"] == 3 / 4
