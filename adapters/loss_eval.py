"""From a forward's log-probs to the training loss: the selected plugin losses under TRL's modifiers.

The trainer's forward (:meth:`~.trl.PluginDPOTrainer.compute_pair_logps`)
yields a :class:`~.trl.PairForward`; here it becomes the
:class:`~dpo_plugins.specs.LossBatch` the losses read (LD-DPO sums,
f-divergence scores, token-level fields only when asked for), and the losses'
per-pair values become ``sum_i w_i * mean(WPO weight * loss_i)``, TRL's
combination rule.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from dpo_plugins.errors import DpoPluginsError
from dpo_plugins.specs import LossBatch

from .modifiers import f_divergence_scores, ld_sums, wpo_weights
from .token_logps import token_fields


def with_ld_sums(forward, alpha):
    """``forward`` with LD-DPO's sums (policy from its tokens; reference from its tokens when it has them,
    else it is already LD-weighted: TRL's precompute and the reference cache apply ``ld_alpha`` themselves)."""
    if alpha is None:
        return forward
    chosen, rejected = ld_sums(forward.tokens, alpha).chunk(2, dim=0)
    ref_chosen, ref_rejected = forward.sums.ref_chosen_logps, forward.sums.ref_rejected_logps
    if forward.ref_tokens is not None:
        ref_chosen, ref_rejected = ld_sums(forward.ref_tokens, alpha).chunk(2, dim=0)
    sums = dataclasses.replace(forward.sums, chosen_logps=chosen, rejected_logps=rejected,
                               ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected)
    return dataclasses.replace(forward, sums=sums)


def build_loss_batch(forward, needs, f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0) -> LossBatch:
    """The :class:`LossBatch` of ``forward``: scores whenever there is a reference, token fields per ``needs``."""
    extra: dict[str, Any] = token_fields(forward.tokens, needs)
    sums = forward.sums
    if sums.ref_chosen_logps is not None:
        for side in ("chosen", "rejected"):
            logratios = getattr(sums, f"{side}_logps") - getattr(sums, f"ref_{side}_logps")
            extra[f"{side}_scores"] = f_divergence_scores(logratios, f_divergence_type, f_alpha_divergence_coef)
    return dataclasses.replace(sums, **extra)


def combined_loss(terms: Sequence, batch: LossBatch, beta: float, tokens=None, use_weighting=False,
                  pair_weights=None):
    """``(loss, metrics)``: ``sum_i w_i * mean(loss_i)`` (each pair's value times its WPO weight when
    ``use_weighting``, and times ``pair_weights`` when given: :mod:`.padded_batches`) and the scalars the
    losses asked to log, as ``{"LOSS/METRIC": tensor}``."""
    weights = wpo_weights(tokens) if use_weighting else None
    if pair_weights is not None:
        pair_weights = pair_weights.to(batch.chosen_logps.dtype)
        weights = pair_weights if weights is None else weights * pair_weights
    expected = tuple(batch.chosen_logps.shape)
    loss, metrics = 0.0, {}
    for term in terms:
        per_pair = term.fn(batch, beta, **term.params)
        if isinstance(per_pair, tuple) and len(per_pair) == 2 and isinstance(per_pair[1], Mapping):
            per_pair, extra = per_pair
            metrics.update({f"{term.name}/{key}": value for key, value in extra.items()})
        if tuple(getattr(per_pair, "shape", ())) != expected:
            raise DpoPluginsError(
                f"loss {term.name!r} returned shape {tuple(getattr(per_pair, 'shape', ()))}, "
                f"expected one value per pair {expected}"
            )
        if weights is not None:
            per_pair = per_pair * weights
        loss += per_pair.mean() * term.weight
    return loss, metrics
