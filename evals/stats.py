"""Win-rate statistics: counts, a Wilson 95% interval, judge consistency, and AlpacaEval's numbers.

Every function takes plain Python lists and returns plain floats or
``None`` (never NaN), so results go straight into ``metrics.json``. The
AlpacaEval numbers (win rate and its standard error from preferences,
discrete win rate, length control) come from :mod:`.preferences` and
:mod:`.length_control`, which equal AlpacaEval's own functions.
"""

from __future__ import annotations

import math
from typing import Sequence

OUTCOMES = ("win", "loss", "tie")
Z_95 = 1.959963984540054


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


def mean_interval(values: Sequence[float], z: float = Z_95) -> list | None:
    """Normal-approximation 95% interval of the mean, ``mean +- z * sd / sqrt(n)`` (sample sd, n - 1).

    ``None`` with fewer than two values, where the spread is unknown.
    """
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    half = z * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    return [mean - half, mean + half]


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


def alpaca_eval_metrics(preferences: Sequence[float | None], model_lengths: Sequence[int],
                        baseline_lengths: Sequence[int], table=None, same_generator: bool = False) -> dict:
    """AlpacaEval's head-to-head numbers and a length-controlled win rate for AlpacaEval preferences.

    ``lc_method`` names the GLM (AlpacaEval 2's ``length_controlled_v1`` only
    with a ``df_gamed.csv`` ``table``; see :mod:`.length_control`).
    """
    from .length_control import length_controlled
    from .preferences import head_to_head

    lc = length_controlled(preferences, model_lengths, baseline_lengths, table, same_generator)
    return {**head_to_head(preferences), "lc_win_rate": lc.value, "lc_standard_error": lc.standard_error,
            "lc_method": lc.method, "lc_win_rate_note": lc.note}


def combined_preferences(first_order: Sequence, swapped_order: Sequence) -> list[float]:
    """The policy's AlpacaEval preference per prompt from the two orders' judgments.

    Verdicts (``a`` / ``b`` / ``tie``) combine by MT-Bench's rule (a win only
    when both orders agree: 2, a loss 1, anything else 1.5). Probabilities
    (a judge's ``P(a better)``) average over the orders: ``1 + (p_first +
    1 - p_swapped) / 2``, so a position bias cancels instead of counting.
    """
    from .preferences import policy_preference

    out = []
    for x, y in zip(first_order, swapped_order):
        if isinstance(x, str) or isinstance(y, str):
            out.append(policy_preference(combine_orders([as_verdict(x)], [as_verdict(y)])[0]))
        else:
            out.append(1 + (float(x) + 1 - float(y)) / 2)
    return out


def as_verdict(judgment) -> str:
    """A verdict, or a probability ``P(a better)`` read as one (exactly 0.5 is a tie)."""
    if isinstance(judgment, str):
        return judgment
    return "a" if judgment > 0.5 else "b" if judgment < 0.5 else "tie"


PREFERENCE_TIE_EPSILON = 1e-9


def is_probability(judgment) -> bool:
    """A scoring judge's answer for one order: ``P(the first-shown output is better)``."""
    return isinstance(judgment, float) and 0.0 <= judgment <= 1.0


def outcomes_of(first_order: Sequence, swapped_order: Sequence, epsilon: float = PREFERENCE_TIE_EPSILON) -> list[str]:
    """``win`` / ``loss`` / ``tie`` per prompt for the policy.

    Verdicts: a win only when both orders agree (:func:`combine_orders`,
    MT-Bench's rule). Probabilities: the two orders' average
    (:func:`combined_preferences`) decides, and a tie is the exception, a
    preference within ``epsilon`` of one half (identical outputs give one
    half up to float rounding).
    """
    outcomes = []
    for x, y, preference in zip(first_order, swapped_order, combined_preferences(first_order, swapped_order)):
        if is_probability(x) and is_probability(y):
            outcomes.append("win" if preference > 1.5 + epsilon else "loss" if preference < 1.5 - epsilon else "tie")
        else:
            outcomes += combine_orders([as_verdict(x)], [as_verdict(y)])
    return outcomes


def first_position_rate(first_order: Sequence, swapped_order: Sequence) -> float | None:
    """The judge's mean preference for whichever output it was shown first: 0.5 for an unbiased judge.

    Probabilities count as they are; verdicts as 1 (first), 0 (second), 0.5 (tie).
    """
    shown_first = [x if is_probability(x) else {"a": 1.0, "b": 0.0, "tie": 0.5}[as_verdict(x)]
                   for x in (*first_order, *swapped_order)]
    return sum(shown_first) / len(shown_first) if shown_first else None


def win_rate_metrics(first_order, swapped_order, policy_lengths, baseline_lengths) -> dict:
    """Every win-rate number for ``metrics.json`` from the two orders' judgments.

    Judgments are verdicts or probabilities (see :func:`combined_preferences`).
    ``wins`` / ``losses`` / ``ties`` and the Wilson interval count the
    outcomes of :func:`outcomes_of`; ``position_consistency`` compares the
    two orders' verdicts and ``first_position_rate`` measures position bias;
    ``win_rate``, ``standard_error``, ``discrete_win_rate`` and the LC are
    AlpacaEval's, from the combined preferences (for verdicts ``win_rate``
    equals the MT-Bench rate with ties half).
    """
    first, swapped = [as_verdict(x) for x in first_order], [as_verdict(y) for y in swapped_order]
    outcomes = outcomes_of(first_order, swapped_order)
    counts = outcome_counts(outcomes)
    alpaca = alpaca_eval_metrics(combined_preferences(first_order, swapped_order), policy_lengths, baseline_lengths)
    n = len(outcomes)
    return {
        **counts,
        **alpaca,
        "win_rate_ci": wilson_interval(**counts),
        "win_rate_ci_method": "wilson-95 on the verdicts (ties count half)",
        "position_consistency": position_consistency(first, swapped),
        "first_position_rate": first_position_rate(first_order, swapped_order),
        "avg_len_policy": sum(policy_lengths) / n if n else None,
        "avg_len_baseline": sum(baseline_lengths) / n if n else None,
    }
