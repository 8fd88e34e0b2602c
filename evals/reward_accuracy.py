"""Reward accuracy on held-out preference pairs, RewardBench's way.

The implicit DPO reward of a completion is ``sum log pi_policy - sum log
pi_ref`` over its completion tokens (beta only rescales it, so rankings do not
depend on it). A pair is correct only when the chosen reward is strictly
greater than the rejected one: ties count as wrong. Reference-free modes
score with the policy alone: the summed log-prob (``ref-free-sum``), its
mean per completion token (``ref-free-mean``) or minus the L2 norm of the
per-token log-probs (``ref-free-norm``): RewardBench's ``sum``, ``avg`` and
``norm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from dpo_plugins.errors import DpoPluginsError, SelfReferenceError

from dpo_plugins.specs import PairLogps

from .logps import pair_logps

MODES = ("dpo", "ref-free-sum", "ref-free-mean", "ref-free-norm")


@dataclass
class PairScores:
    """Per-pair numbers, in input order, as plain floats (``None`` = not defined)."""

    mode: str
    chosen_scores: list
    rejected_scores: list
    chosen_logps: list
    rejected_logps: list
    chosen_lengths: list
    rejected_lengths: list
    chosen_logratios: list = field(default_factory=list)
    rejected_logratios: list = field(default_factory=list)
    # dpo mode: each model scored alone in ref-free-mean mode, {"model": PairScores, "ref": PairScores}
    ref_free_mean: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """One dict per pair, for ``pairs.jsonl``."""
        count = len(self.chosen_scores)
        ratios = self.chosen_logratios or [None] * count, self.rejected_logratios or [None] * count
        return [
            {
                "index": i,
                "chosen_logratio": ratios[0][i],
                "rejected_logratio": ratios[1][i],
                "chosen_score": self.chosen_scores[i],
                "rejected_score": self.rejected_scores[i],
                "margin": _difference(self.chosen_scores[i], self.rejected_scores[i]),
                "correct": _correct(self.chosen_scores[i], self.rejected_scores[i]),
                "chosen_logps": self.chosen_logps[i],
                "rejected_logps": self.rejected_logps[i],
                "chosen_tokens": int(self.chosen_lengths[i]),
                "rejected_tokens": int(self.rejected_lengths[i]),
            }
            for i in range(count)
        ]


def reference_free_mean_metrics(scores: PairScores) -> dict:
    """In dpo mode, each model's own ``ref-free-mean`` metrics on the same pairs: ``{"model": ..., "ref": ...}``.

    The scores come from the sums the implicit rewards used, through the
    same code as ``--reward-mode ref-free-mean``, so each equals that
    model's own ref-free-mean eval without another forward.
    """
    return {name: reward_metrics(own.chosen_scores, own.rejected_scores) for name, own in scores.ref_free_mean.items()}


def finite_or_none(value) -> float | None:
    """A float, or ``None`` for NaN/inf: a NaN is never reported as a number."""
    value = float(value)
    return value if math.isfinite(value) else None


def _difference(a, b):
    return None if a is None or b is None else finite_or_none(a - b)


def _correct(chosen, rejected) -> bool:
    return chosen is not None and rejected is not None and chosen > rejected


def reward_metrics(chosen_scores: Sequence, rejected_scores: Sequence) -> dict:
    """``n_pairs``, ``reward_accuracy`` (ties and undefined scores wrong), ``reward_ties``, ``mean_margin``.

    ``reward_accuracy`` and ``mean_margin`` are ``None`` when there are no
    pairs (or no pair with both scores defined, for the margin).
    """
    if len(chosen_scores) != len(rejected_scores):
        raise DpoPluginsError(f"{len(chosen_scores)} chosen scores but {len(rejected_scores)} rejected scores")
    chosen = [finite_or_none(x) if x is not None else None for x in chosen_scores]
    rejected = [finite_or_none(x) if x is not None else None for x in rejected_scores]
    count = len(chosen)
    margins = [m for m in (_difference(c, r) for c, r in zip(chosen, rejected)) if m is not None]
    return {
        "n_pairs": count,
        "reward_accuracy": sum(_correct(c, r) for c, r in zip(chosen, rejected)) / count if count else None,
        "reward_ties": sum(c is not None and c == r for c, r in zip(chosen, rejected)),
        "mean_margin": finite_or_none(sum(margins) / len(margins)) if margins else None,
        "n_undefined_scores": count - len(margins),
    }


def accuracy_by_subset(correct: Sequence[bool], subsets: Sequence[str]) -> dict:
    """``{subset: {"n_pairs", "reward_accuracy"}}``: RewardBench's per-subset accuracy (correct / total)."""
    found: dict = {}
    for ok, subset in zip(correct, subsets):
        counts = found.setdefault(subset, [0, 0])
        counts[0] += bool(ok)
        counts[1] += 1
    return {subset: {"n_pairs": total, "reward_accuracy": right / total} for subset, (right, total) in sorted(found.items())}


def check_not_self_reference(policy, reference, allow: bool = False) -> None:
    """Refuse a reference that is the policy itself or has identical weights.

    Every implicit reward would be exactly 0 and every pair a tie: a common
    silent bug (evaluating the trained policy against itself).
    """
    if allow or reference is None:
        return
    if reference is policy or _same_weights(policy, reference):
        raise SelfReferenceError(
            "the reference model has the same weights as the policy, so every log-ratio is 0; give the model "
            "the policy was trained from as the reference, or allow it explicitly (--allow-self-reference)"
        )


def _same_weights(a, b) -> bool:
    import torch

    state_a, state_b = a.state_dict(), b.state_dict()
    if state_a.keys() != state_b.keys():
        return False
    return all(state_a[k].shape == state_b[k].shape and torch.equal(state_a[k], state_b[k]) for k in state_a)


def score_pairs(
    policy,
    pairs: Sequence[Mapping[str, Any]],
    reference=None,
    mode: str = "dpo",
    allow_self_reference: bool = False,
    logps_fn=pair_logps,
    reference_logps=None,
    **logps_kwargs,
) -> PairScores:
    """Implicit rewards of tokenized pairs (see :func:`~.logps.pair_logps` for ``logps_kwargs``).

    ``pairs`` come from :func:`dpo_plugins.adapters.tokenization.tokenize_pair`;
    the caller drops those TRL would drop (``prompt_dropped``). ``logps_fn``
    is any function with :func:`~.logps.pair_logps`'s signature and result.
    ``reference_logps``: the reference's ``(chosen, rejected)`` sums when
    already known (e.g. from the disk cache of
    :mod:`dpo_plugins.adapters.ref_cache`); the reference model is then not
    run, only checked against self-reference.
    """
    if mode not in MODES:
        raise DpoPluginsError(f"reward mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "dpo" and reference is None:
        raise DpoPluginsError("reward mode 'dpo' needs a reference model (or use ref-free-sum / ref-free-mean)")
    if mode != "dpo" and reference is not None:
        raise DpoPluginsError(f"reward mode {mode!r} is reference-free; do not give a reference model")
    check_not_self_reference(policy, reference, allow_self_reference)
    if mode == "ref-free-norm":  # needs every token's log-prob, which only the plain forward keeps
        logps_kwargs = {**logps_kwargs, "forward": "plain", "token_reduce": "neg_l2_norm"}
    policy_logps = logps_fn(policy, pairs, desc="policy log-probs", **logps_kwargs)
    if mode != "dpo":
        return scores_from(policy_logps, mode)
    if reference_logps is None:
        computed = logps_fn(reference, pairs, desc="reference log-probs", **logps_kwargs)
        reference_logps = computed.chosen_logps, computed.rejected_logps
    return implicit_rewards(policy_logps, *reference_logps)


def implicit_rewards(policy_logps: PairLogps, ref_chosen, ref_rejected) -> PairScores:
    """dpo mode from sums already computed: the log-ratios, and each model's own ref-free-mean scores."""
    scores = scores_from(policy_logps, "dpo")
    reference_sums = PairLogps.without_reference(ref_chosen, ref_rejected, policy_logps.chosen_lengths,
                                                 policy_logps.rejected_lengths)
    scores.ref_free_mean = {"model": scores_from(policy_logps, "ref-free-mean"),
                            "ref": scores_from(reference_sums, "ref-free-mean")}
    scores.chosen_logratios = _floats(policy_logps.chosen_logps - ref_chosen)
    scores.rejected_logratios = _floats(policy_logps.rejected_logps - ref_rejected)
    scores.chosen_scores, scores.rejected_scores = scores.chosen_logratios, scores.rejected_logratios
    return scores


def scores_from(logps: PairLogps, mode: str) -> PairScores:
    """One model's scores in ``mode`` from its sums (in dpo mode, the sums; :func:`implicit_rewards` subtracts)."""
    chosen, rejected = logps.chosen_logps, logps.rejected_logps
    if mode == "ref-free-mean":  # 0 tokens -> NaN -> None: undefined, counted wrong
        chosen, rejected = chosen / logps.chosen_lengths, rejected / logps.rejected_lengths
    sums = mode != "ref-free-norm"  # in that mode the forward returned norms, not log-prob sums
    return PairScores(
        mode=mode,
        chosen_scores=_floats(chosen),
        rejected_scores=_floats(rejected),
        chosen_logps=_floats(logps.chosen_logps) if sums else [None] * len(chosen),
        rejected_logps=_floats(logps.rejected_logps) if sums else [None] * len(rejected),
        chosen_lengths=_floats(logps.chosen_lengths),
        rejected_lengths=_floats(logps.rejected_lengths),
    )


def _floats(tensor) -> list:
    return [finite_or_none(x) for x in tensor.tolist()]
