"""Scores of one prompt's K samples, for building online-DPO pairs.

Three ways, each higher-is-better:

- ``anchor`` (any judge plugin): every sample against the prompt's first
  sample, judged in both orders; a sample's score is its probability of
  beating the anchor (verdicts count 1 / 0.5 / 0, probabilities average over
  the two orders: :func:`~.stats.combined_preferences`). The anchor itself
  scores 0.5. K - 1 comparisons per prompt.
- ``round-robin`` (any judge plugin): every two samples, both orders; a
  sample's score is its mean probability of beating each other sample (the
  ranking PairRM-based recipes use). K(K-1)/2 comparisons per prompt.
- ``dice``: the implicit reward of a DPO policy against its reference,
  ``beta * (log pi(y|x) - log pi_ref(y|x))`` summed over the completion's
  tokens (DICE, Chen et al. 2025), tokenized exactly as TRL trains and scored
  by the eval pipeline's :func:`~.reward_accuracy.score_pairs`.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Sequence

from dpo_plugins.errors import DpoPluginsError

from .stats import combined_preferences
from .judging import judge_orders, public_params

JUDGE_MODES = ("anchor", "round-robin")


def judge_scores(judge_name: str, mode: str, prompt: Any, samples: Sequence[str], params=None) -> tuple[list, dict]:
    """``(scores, judge_info)`` of one prompt's samples under a judge plugin in ``mode``."""
    if mode == "anchor":
        comparisons = [(i, 0) for i in range(1, len(samples))]
    elif mode == "round-robin":
        comparisons = list(combinations(range(len(samples)), 2))
    else:
        raise DpoPluginsError(f"judge mode {mode!r}: expected one of {', '.join(JUDGE_MODES)}")
    settings, provider, first_answers, swapped_answers = judge_orders(
        judge_name, [prompt] * len(comparisons), [samples[i] for i, _ in comparisons],
        [samples[j] for _, j in comparisons], params)
    first, swapped = first_answers.judgments, swapped_answers.judgments
    if any(answer is None for answer in (*first, *swapped)):
        raise DpoPluginsError(f"judge {judge_name!r} could not judge {sum(a is None for a in (*first, *swapped))} "
                              f"of {2 * len(comparisons)} comparisons of this prompt's samples")
    info = {"name": judge_name, "provider": provider, "params": public_params(settings)}
    beats = [preference - 1 for preference in combined_preferences(first, swapped)]  # P(i beats j)
    if mode == "anchor":
        return [0.5, *beats], info
    totals = [0.0] * len(samples)
    for (i, j), p in zip(comparisons, beats):
        totals[i] += p
        totals[j] += 1 - p
    return [total / (len(samples) - 1) for total in totals], info


def dice_scores(policy, reference, tokenizer, prompts: Sequence[Any], samples: Sequence[Sequence[str]],
                beta: float, batch_size: int = 8) -> list[list[float]]:
    """``beta * (log pi - log pi_ref)`` of every sample, ``samples[p][k]`` for ``prompts[p]``.

    Samples travel two to a tokenized pair (an odd last one beside itself),
    so one forward of each model scores them all.
    """
    from dpo_plugins.adapters.tokenization import tokenize_pair

    from .reward_accuracy import score_pairs

    pairs, slots = [], []  # slots[n] = (prompt, first sample, second sample) of pair n
    for p, (prompt, outputs) in enumerate(zip(prompts, samples)):
        for k in range(0, len(outputs), 2):
            other = min(k + 1, len(outputs) - 1)
            pairs.append(tokenize_pair(trl_row(prompt, outputs[k], outputs[other]), tokenizer))
            slots.append((p, k, other))
    scored = score_pairs(policy, pairs, reference=reference, mode="dpo", max_length=None, batch_size=batch_size)
    out = [[None] * len(outputs) for outputs in samples]
    for (p, k, other), chosen, rejected in zip(slots, scored.chosen_scores, scored.rejected_scores):
        out[p][k], out[p][other] = _reward(beta, chosen), _reward(beta, rejected)
    return out


def _reward(beta: float, logratio) -> float:
    if logratio is None:
        raise DpoPluginsError("DICE: a sample's log-ratio is not finite (NaN or infinite log-probs)")
    return beta * logratio


def trl_row(prompt: Any, first: str, second: str) -> dict:
    """A TRL row for ``prompt`` with two completions: messages for a chat prompt, strings otherwise."""
    if isinstance(prompt, str):
        return {"prompt": prompt, "chosen": first, "rejected": second}
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": first}],
            "rejected": [{"role": "assistant", "content": second}]}
