"""Win-rate statistics, including AlpacaEval's length-controlled win rate on constructed fixtures."""

from __future__ import annotations

import math

import pytest

from dpo_plugins.evals.stats import (
    combine_orders,
    length_controlled_win_rate,
    position_consistency,
    preference,
    wilson_interval,
    win_rate,
    win_rate_metrics,
)


def logit(p):
    return math.log(p / (1 - p))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def two_length_groups(long_wins, long_losses, short_wins, short_losses, short_ties=0, d=120):
    """The fixture: policy outputs either ``d`` characters longer than the baseline's or ``d`` shorter.

    With two values of the length difference the feature ``tanh(d / std)`` takes
    the values +a and -a, so the two-parameter logistic model is saturated: it
    fits each group's preference rate exactly, sigmoid(t0 + t1 a) = rate(+d) and
    sigmoid(t0 - t1 a) = rate(-d). Hence t0 = (logit(rate(+d)) + logit(rate(-d))) / 2
    and the length-controlled win rate (prediction at d = 0) is sigmoid(t0),
    whatever a (and so whatever std convention) is.
    """
    outcomes = ["win"] * long_wins + ["loss"] * long_losses + ["win"] * short_wins + ["loss"] * short_losses + ["tie"] * short_ties
    n_long = long_wins + long_losses
    policy = [500 + d] * n_long + [500 - d] * (len(outcomes) - n_long)
    return outcomes, policy, [500] * len(outcomes)


def test_lc_win_rate_equals_the_closed_form_on_a_saturated_fixture():
    # Verbose answers win 24 of 30, short ones 6 of 20: a judge that likes length.
    outcomes, policy, baseline = two_length_groups(24, 6, 6, 14)
    lc, note = length_controlled_win_rate(outcomes, policy, baseline)
    assert lc == pytest.approx(sigmoid((logit(24 / 30) + logit(6 / 20)) / 2), abs=1e-9)
    assert win_rate(30, 20, 0) == 0.6 and lc < 0.6  # the raw rate rewarded verbosity
    assert "predicted at equal lengths" in note and "extrapolated" not in note


def test_lc_win_rate_says_when_it_extrapolates():
    outcomes, policy, baseline = two_length_groups(24, 6, 6, 14)
    lc, note = length_controlled_win_rate(outcomes, [p + 300 for p in policy], baseline)
    assert lc is not None and "extrapolated: every policy output is longer" in note


def test_ties_are_half_a_preference_in_the_fit():
    outcomes, policy, baseline = two_length_groups(15, 5, 2, 8, short_ties=10)
    lc, _ = length_controlled_win_rate(outcomes, policy, baseline)
    short_rate = (2 + 0.5 * 10) / 20
    assert lc == pytest.approx(sigmoid((logit(15 / 20) + logit(short_rate)) / 2), abs=1e-9)


def alpaca_eval_glm_reference(outcomes, policy_texts, baseline_texts):
    """An independent re-implementation of AlpacaEval's length_controlled_v1 GLM, written from its
    description (alpaca_eval/metrics/glm_winrate.py): output_1 is the baseline, output_2 the model;
    preference in {1, 1.5, 2} mapped to [0, 1]; std_delta_len = (len_1 - len_2) / pandas std;
    features [1, tanh(std_delta_len)] without a fitted intercept; soft labels fitted by duplicating
    each row with label 1 (weight p) and label 0 (weight 1 - p); prediction at std_delta_len = 0.
    Here unpenalised and without instruction difficulty, fitted with scipy's BFGS instead of Newton.
    """
    import numpy as np
    import pandas as pd
    from scipy.optimize import minimize

    df = pd.DataFrame({"output_1": baseline_texts, "output_2": policy_texts,
                       "preference": [{"win": 2.0, "tie": 1.5, "loss": 1.0}[o] for o in outcomes]})
    delta = df["output_1"].str.len() - df["output_2"].str.len()
    x = np.tanh(delta / delta.std()).to_numpy()
    p = (df["preference"].astype(float) - 1).to_numpy()
    design = np.stack([np.ones_like(x), x], axis=1)
    features = np.concatenate([design, design])
    labels = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    weights = np.concatenate([p, 1 - p])

    def negative_log_likelihood(theta):
        z = features @ theta
        return -np.sum(weights * (labels * -np.logaddexp(0, -z) + (1 - labels) * -np.logaddexp(0, z)))

    theta = minimize(negative_log_likelihood, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x
    return float(1 / (1 + np.exp(-(np.array([1.0, 0.0]) @ theta))))


def test_lc_win_rate_agrees_with_alpaca_eval_formula_on_varied_lengths():
    """Fixture: 60 prompts with many different lengths and a judge biased towards length."""
    import random

    rng = random.Random(7)
    policy_texts, baseline_texts, outcomes = [], [], []
    for _ in range(60):
        policy_len, baseline_len = rng.randint(20, 400), rng.randint(20, 400)
        policy_texts.append("x" * policy_len)
        baseline_texts.append("y" * baseline_len)
        p_win = sigmoid(0.4 + 1.5 * math.tanh((policy_len - baseline_len) / 150))
        draw = rng.random()
        outcomes.append("win" if draw < p_win * 0.9 else "tie" if draw < p_win else "loss")
    ours, _ = length_controlled_win_rate(outcomes, [len(t) for t in policy_texts], [len(t) for t in baseline_texts])
    assert ours == pytest.approx(alpaca_eval_glm_reference(outcomes, policy_texts, baseline_texts), abs=1e-6)


@pytest.mark.parametrize("case", ["few", "constant", "separated"])
def test_lc_win_rate_says_when_it_is_meaningless(case):
    if case == "few":
        outcomes, policy, baseline = two_length_groups(5, 2, 3, 4)
        expected = "fewer than 20"
    elif case == "constant":
        outcomes, policy, baseline = ["win"] * 15 + ["loss"] * 15, [10] * 30, [5] * 30
        expected = "same length difference"
    else:
        outcomes, policy, baseline = two_length_groups(20, 0, 0, 20)
        expected = "fit diverges"
    lc, note = length_controlled_win_rate(outcomes, policy, baseline)
    assert lc is None and expected in note


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
    assert preference("tie") == 0.5


def test_a_scoring_judges_two_orders_average_into_one_preference():
    from dpo_plugins.evals.stats import PREFERENCE_TIE_EPSILON, combine_probabilities

    first, swapped = [0.9, 0.6, 0.3, 0.7], [0.7, 0.6, 0.8, 0.3]  # P(first shown better), policy first / baseline first
    preferences, outcomes = combine_probabilities(first, swapped)
    assert preferences == pytest.approx([0.6, 0.5, 0.25, 0.7])
    assert outcomes == ["win", "tie", "loss", "win"]
    assert combine_probabilities([0.5 + 3 * PREFERENCE_TIE_EPSILON], [0.5])[1] == ["win"]
    metrics = win_rate_metrics(first, swapped, [10, 20, 30, 40], [5] * 4)
    assert (metrics["wins"], metrics["losses"], metrics["ties"]) == (2, 1, 1)
    assert metrics["soft_win_rate"] == pytest.approx(sum([0.6, 0.5, 0.25, 0.7]) / 4)
    assert metrics["first_position_rate"] == pytest.approx(sum(first + swapped) / 8)  # 0.6125: leans to slot A
    assert metrics["position_consistency"] == 2 / 4  # b/a and a/b: the last two prompts only
    verdicts = win_rate_metrics(["a", "a"], ["a", "b"], [1, 1], [1, 1])
    assert verdicts["first_position_rate"] == 3 / 4 and verdicts["soft_win_rate"] is None
