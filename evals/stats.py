"""Win-rate statistics: counts, a Wilson 95% interval, length control, judge consistency.

Every function takes plain Python lists and returns plain floats or
``None`` (never NaN), so results go straight into ``metrics.json``.
"""

from __future__ import annotations

import math
from typing import Sequence

OUTCOMES = ("win", "loss", "tie")
Z_95 = 1.959963984540054
LC_MIN_PAIRS = 20


def outcome_counts(outcomes: Sequence[str]) -> dict:
    """``wins``, ``losses``, ``ties`` of the policy against the baseline."""
    unknown = sorted(set(outcomes) - set(OUTCOMES))
    if unknown:
        raise ValueError(f"unknown outcomes {unknown}; expected {OUTCOMES}")
    return {"wins": outcomes.count("win"), "losses": outcomes.count("loss"), "ties": outcomes.count("tie")}


def win_rate(wins: int, losses: int, ties: int) -> float | None:
    """``(wins + ties / 2) / n`` (MT-Bench's adjusted win rate); ``None`` without games."""
    total = wins + losses + ties
    return (wins + 0.5 * ties) / total if total else None


def wilson_interval(wins: int, losses: int, ties: int, z: float = Z_95) -> list | None:
    """Wilson score interval for the win rate, ties counted as half a win.

    A tie has less variance than a coin-flip game, so treating the rate as
    binomial over n games makes the interval slightly conservative.
    """
    n = wins + losses + ties
    if not n:
        return None
    p = (wins + 0.5 * ties) / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def preference(outcome: str) -> float:
    """AlpacaEval's preference for the policy: 1 win, 0.5 tie, 0 loss."""
    return {"win": 1.0, "tie": 0.5, "loss": 0.0}[outcome]


def length_controlled_win_rate(
    outcomes: Sequence[str], policy_lengths: Sequence[float], baseline_lengths: Sequence[float],
    min_pairs: int = LC_MIN_PAIRS,
) -> tuple[float | None, str]:
    """AlpacaEval 2's length-controlled win rate and a note on how it was obtained.

    Fits ``P(policy preferred) = sigmoid(theta_0 + theta_1 * tanh(d / std(d)))``
    with ``d`` the length difference (AlpacaEval's ``std_delta_len``; its
    sign does not matter), by maximum likelihood on soft labels (ties are
    0.5), and predicts it at ``d = 0``: ``sigmoid(theta_0)``. AlpacaEval also
    has an instruction-difficulty term fitted on its 805 fixed instructions
    and an L1 penalty tuned by cross-validation; neither exists for your own
    prompts, so this is its GLM without them. Returns ``(None, reason)`` when
    the fit is meaningless: too few pairs, no variation in length
    difference, or a diverging fit (outcomes separated by length, or
    length differences too alike to extrapolate from). The note says when
    equal length lies outside the observed differences (an extrapolation).
    """
    n = len(outcomes)
    if n < min_pairs:
        return None, f"not computed: {n} pairs, fewer than {min_pairs} make a length regression meaningless"
    deltas = [float(p) - float(b) for p, b in zip(policy_lengths, baseline_lengths)]
    mean = sum(deltas) / n
    std = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (n - 1))
    if std == 0:
        return None, "not computed: every pair has the same length difference, so length cannot be separated out"
    features = [math.tanh(d / std) for d in deltas]
    labels = [preference(o) for o in outcomes]
    theta = _fit_logistic(features, labels)
    if theta is None:
        return None, ("not computed: the logistic fit diverges (outcomes separated by length, or length "
                      "differences too alike to extrapolate to equal lengths)")
    note = (f"logistic GLM on tanh(length difference / std), {n} pairs, "
            f"theta_0={theta[0]:.4f}, theta_length={theta[1]:.4f}, predicted at equal lengths")
    if min(deltas) > 0 or max(deltas) < 0:
        side = "longer" if min(deltas) > 0 else "shorter"
        note += f"; extrapolated: every policy output is {side} than the baseline's"
    return _sigmoid(theta[0]), note


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def _fit_logistic(features, labels, iterations: int = 100, bound: float = 30.0):
    """Newton's method for a two-parameter logistic regression with soft labels.

    Returns ``(theta_0, theta_1)``, or ``None`` if the likelihood has no
    finite maximum (a coefficient runs past ``bound``, i.e. odds of e^30).
    """
    t0 = t1 = 0.0
    for _ in range(iterations):
        g0 = g1 = h00 = h01 = h11 = 0.0
        for x, y in zip(features, labels):
            p = _sigmoid(t0 + t1 * x)
            w = p * (1 - p)
            g0 += y - p
            g1 += (y - p) * x
            h00 += w
            h01 += w * x
            h11 += w * x * x
        det = h00 * h11 - h01 * h01
        if det <= 1e-12:
            return None
        step0 = (h11 * g0 - h01 * g1) / det
        step1 = (h00 * g1 - h01 * g0) / det
        t0, t1 = t0 + step0, t1 + step1
        if abs(t0) > bound or abs(t1) > bound:
            return None
        if abs(step0) < 1e-12 and abs(step1) < 1e-12:
            return t0, t1
    return None


def position_consistency(first_order: Sequence[str], swapped_order: Sequence[str]) -> float | None:
    """Share of prompts whose verdict survives swapping the two outputs.

    ``first_order`` verdicts saw (policy, baseline) as (a, b);
    ``swapped_order`` saw (baseline, policy). Consistent: ``a``/``b``,
    ``b``/``a`` or ``tie``/``tie``.
    """
    if not first_order:
        return None
    consistent = {("a", "b"), ("b", "a"), ("tie", "tie")}
    return sum((x, y) in consistent for x, y in zip(first_order, swapped_order)) / len(first_order)


def combine_orders(first_order: Sequence[str], swapped_order: Sequence[str]) -> list[str]:
    """MT-Bench's rule: a win or loss only when both orders agree, else a tie."""
    outcomes = []
    for x, y in zip(first_order, swapped_order):
        if (x, y) == ("a", "b"):
            outcomes.append("win")
        elif (x, y) == ("b", "a"):
            outcomes.append("loss")
        else:
            outcomes.append("tie")
    return outcomes


PREFERENCE_TIE_EPSILON = 1e-9


def is_probability(judgement) -> bool:
    """A scoring judge's answer for one order: P(the first-shown output is better)."""
    return isinstance(judgement, float) and 0.0 <= judgement <= 1.0


def order_verdict(probability: float) -> str:
    """The verdict one order's probability implies (for position consistency)."""
    return "a" if probability > 0.5 else "b" if probability < 0.5 else "tie"


def combine_probabilities(first_order: Sequence[float], swapped_order: Sequence[float],
                          epsilon: float = PREFERENCE_TIE_EPSILON) -> tuple[list[float], list[str]]:
    """Preferences for the policy and outcomes from a scoring judge's two orders.

    ``first_order`` is P(policy better) with the policy shown first,
    ``swapped_order`` P(baseline better) with the baseline shown first; the
    preference is their average, ``(p1 + 1 - p2) / 2``, so a judge that adds
    the same pull towards one slot in both orders has it cancel. A tie only
    when the preference is within ``epsilon`` of 1/2: identical outputs give
    1/2 up to float rounding.
    """
    preferences = [(p1 + 1.0 - p2) / 2 for p1, p2 in zip(first_order, swapped_order)]
    outcomes = ["win" if p > 0.5 + epsilon else "loss" if p < 0.5 - epsilon else "tie" for p in preferences]
    return preferences, outcomes


def win_rate_metrics(first_order, swapped_order, policy_lengths, baseline_lengths) -> dict:
    """Every win-rate number for ``metrics.json`` from the two orders' verdicts or probabilities.

    With verdicts a win needs both orders (:func:`combine_orders`); with a
    scoring judge's probabilities the two orders are averaged
    (:func:`combine_probabilities`) and ``soft_win_rate`` is the mean
    preference (AlpacaEval's win rate for such annotators).
    ``first_position_rate`` measures position bias either way: the judge's
    mean preference for whichever output it was shown first (ties and
    probabilities count as they fall), 0.5 for an unbiased judge.
    """
    soft_win_rate = None
    if first_order and all(is_probability(p) for p in (*first_order, *swapped_order)):
        preferences, outcomes = combine_probabilities(first_order, swapped_order)
        soft_win_rate = sum(preferences) / len(preferences)
        first_position = [*first_order, *swapped_order]
        first_order, swapped_order = [order_verdict(p) for p in first_order], [order_verdict(p) for p in swapped_order]
    else:
        outcomes = combine_orders(first_order, swapped_order)
        first_position = [{"a": 1.0, "b": 0.0, "tie": 0.5}[v] for v in (*first_order, *swapped_order)]
    counts = outcome_counts(outcomes)
    lc, lc_note = length_controlled_win_rate(outcomes, policy_lengths, baseline_lengths)
    n = len(outcomes)
    return {
        **counts,
        "win_rate": win_rate(**counts),
        "win_rate_ci": wilson_interval(**counts),
        "win_rate_ci_method": "wilson-95 (ties count half)",
        "lc_win_rate": lc,
        "lc_win_rate_note": lc_note,
        "position_consistency": position_consistency(first_order, swapped_order),
        "first_position_rate": sum(first_position) / len(first_position) if first_position else None,
        "soft_win_rate": soft_win_rate,
        "avg_len_policy": sum(policy_lengths) / n if n else None,
        "avg_len_baseline": sum(baseline_lengths) / n if n else None,
    }
