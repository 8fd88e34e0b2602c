"""TRL's DPO modifiers for plugin losses: f-divergences, WPO weighting, LD-DPO.

``DPOConfig`` has three switches that change every selected loss rather than
being a loss of their own. Here each is a small function on the per-pair or
per-token tensors, written to TRL 1.16's ``DPOTrainer._compute_loss`` formulas
(tests/test_loss_parity.py checks step by step that plugin losses under them
train exactly like TRL):

* ``f_divergence_type`` (Wang et al. 2023, f-DPO): the log-ratio ``u = log
  pi/pi_ref`` of each completion becomes ``f'(exp u)``; a loss reads it as
  ``LossBatch.chosen_scores``/``rejected_scores``. Only valid where the
  loss's reward difference cancels ``log Z(x)`` (TRL's list).
* ``use_weighting`` (WPO, Zhou et al. 2024): each pair's loss is multiplied by
  ``w_chosen * w_rejected``, ``w = exp(mean over tokens of (log p(token) -
  log sum_v p(v)^2))``, without gradient through the weight.
* ``ld_alpha`` (LD-DPO, Liu et al. 2024): the summed log-probs count the
  tokens past the shorter completion's length with weight ``alpha``, for
  the policy and the reference alike.

A loss declares the modifiers it is valid under in ``Loss.modifiers``; any
other setting is refused, naming the losses.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# Clamp so exp(.) stays representable once cast back (TRL's bounds).
_EXP_CLAMP = {torch.float16: 11.0, torch.bfloat16: 80.0, torch.float32: 80.0, torch.float64: 80.0}


def f_divergence_scores(logratios, divergence: str, alpha_coef: float = 1.0):
    """``f'(pi/pi_ref)`` expressed in the log-ratio, for the f-divergence named as TRL names it."""
    if divergence == "reverse_kl":  # f'(t) = log t (+ 1, which cancels in differences)
        return logratios
    if divergence == "forward_kl":  # f'(t) = 1 - 1/t
        return 1 - torch.exp(-logratios)
    if divergence == "js_divergence":  # f'(t) = log(2t / (t + 1))
        return math.log(2) + F.logsigmoid(logratios)
    if divergence == "alpha_divergence":  # f'(t) = (t^(alpha-1) - 1) / (alpha - 1); alpha = 1 is reverse KL
        if abs(alpha_coef - 1.0) < 1e-6:
            return logratios
        exponent = (alpha_coef - 1.0) * logratios
        clamped = torch.clamp(exponent.float(), max=_EXP_CLAMP[exponent.dtype])
        return (torch.exp(clamped) - 1.0).to(exponent.dtype) / (alpha_coef - 1.0)
    raise ValueError(f"unknown f_divergence_type {divergence!r}: expected one of {', '.join(F_DIVERGENCES)}")


def ld_sums(tokens, alpha: float):
    """LD-DPO's per-row sums ``(2B,)``: tokens past ``min(len chosen, len rejected)`` weigh ``alpha``."""
    lengths = tokens.mask.sum(dim=1)
    chosen, rejected = lengths.chunk(2, dim=0)
    shared = torch.minimum(chosen, rejected).repeat(2)
    position = tokens.mask.cumsum(dim=1)  # 1-based rank of each completion token
    tail = tokens.mask & (position > shared[:, None])
    shared_part = (tokens.logps * (tokens.mask & ~tail)).sum(dim=1)
    return shared_part + alpha * (tokens.logps * tail).sum(dim=1)


def wpo_weights(tokens):
    """WPO's per-pair weight ``w_chosen * w_rejected`` ``(B,)``, without gradient."""
    with torch.no_grad():
        aligned = ((tokens.logps - tokens.log_sum_sq_probs) * tokens.mask).sum(dim=1)
        weights = torch.exp(aligned / tokens.mask.sum(dim=1).clamp_min(1))
    chosen, rejected = weights.chunk(2, dim=0)
    return chosen * rejected


def modifier_problems(args, terms: Sequence) -> list[str]:
    """The modifiers ``args`` sets that some selected loss is not valid under, one line each."""
    problems = []
    requested = {
        "f_divergence": ("f_divergence_type", args.f_divergence_type != "reverse_kl"),
        "weighting": ("use_weighting", bool(args.use_weighting)),
        "ld_alpha": ("ld_alpha", args.ld_alpha is not None),
    }
    for modifier, (option, active) in requested.items():
        refusing = [term.name for term in terms if active and modifier not in term.modifiers]
        if refusing:
            problems.append(
                f"{option}={getattr(args, option)!r}: not valid with the loss(es) {', '.join(refusing)} "
                f"(a loss opts in with Loss(modifiers={{{modifier!r}}}))"
            )
    if args.f_divergence_type not in F_DIVERGENCES:
        problems.append(f"f_divergence_type {args.f_divergence_type!r}: expected one of {', '.join(F_DIVERGENCES)}")
    return problems


def forward_needs(terms: Sequence, args) -> frozenset:
    """What the forward must compute for these losses under ``args``' modifiers."""
    needs = set().union(*(term.needs for term in terms)) if terms else set()
    if args.use_weighting:
        needs |= {"tokens", "log_sum_sq_probs"}
    if args.ld_alpha is not None:
        needs.add("tokens")
    return frozenset(needs)
