"""Built-in DPO loss variants: all 15 of TRL 1.16's ``loss_type``s, plus SimPO.

Each ``fn(batch, beta, **params)`` returns the per-pair loss, shape ``(B,)``;
the trainer averages it. Every TRL name here equals TRL 1.16's
``DPOTrainer`` for the same ``loss_type`` (and under the same modifiers:
``f_divergence_type``, ``use_weighting``, ``ld_alpha``), step by step
(tests/test_loss_parity.py). ``simpo`` matches TRL's CPO
``loss_type="simpo"`` formula and needs no reference model. Formulas and
papers: ``docs/losses.md``.

Losses built on TRL's ``delta_score`` read ``batch.chosen_scores`` /
``rejected_scores`` (the log-ratios, or their f-divergence transform), so
they opt into ``f_divergence``; those built on the raw log-ratios do not,
exactly as TRL restricts them.
"""

from __future__ import annotations


from ..hookspecs import hookimpl
from ..specs import Loss

# The modifiers each group is valid under, as TRL 1.16 allows them.
SCORED = frozenset({"f_divergence", "weighting", "ld_alpha"})  # built on the f-divergence scores
LOGRATIO = frozenset({"weighting", "ld_alpha"})  # built on the plain log-ratios
SORTED = frozenset({"ld_alpha"})  # sorting breaks the pairing WPO's weights rely on


def _margin(batch):
    """(log pi/pi_ref)(chosen) - (log pi/pi_ref)(rejected): DPO's implicit reward gap over beta."""
    return (batch.chosen_logps - batch.ref_chosen_logps) - (batch.rejected_logps - batch.ref_rejected_logps)


def _delta_score(batch):
    """TRL's ``delta_score``: the margin of the f-divergence scores (the plain margin under reverse KL).

    Falls back to the plain margin for a caller that builds a LossBatch
    without scores (e.g. a test, or an older host)."""
    if batch.chosen_scores is None:
        return _margin(batch)
    return batch.chosen_scores - batch.rejected_scores


def _logratios(batch):
    return batch.chosen_logps - batch.ref_chosen_logps, batch.rejected_logps - batch.ref_rejected_logps


def _scores(batch):
    return (batch.chosen_scores, batch.rejected_scores) if batch.chosen_scores is not None else _logratios(batch)


def _per_token(logps, lengths):
    """Sum over completion tokens -> mean per completion token (empty completions count as one token)."""
    return logps / lengths.clamp(min=1.0)


def _smoothed_sigmoid(logits, label_smoothing):
    """-log sigma(logits) with labels flipped at rate label_smoothing (cDPO's conservative form)."""
    import torch.nn.functional as F

    return -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing


def sigmoid(batch, beta, **params):
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * margin)."""
    import torch.nn.functional as F

    return -F.logsigmoid(beta * _delta_score(batch))


def hinge(batch, beta, **params):
    """SLiC-style hinge (Zhao et al. 2023): max(0, 1 - beta * margin)."""
    import torch

    return torch.relu(1 - beta * _delta_score(batch))


def ipo(batch, beta, **params):
    """IPO (Azar et al. 2023), scores averaged per completion token as TRL does."""
    chosen, rejected = _scores(batch)
    gap = _per_token(chosen, batch.chosen_lengths) - _per_token(rejected, batch.rejected_lengths)
    return (gap - 1 / (2 * beta)) ** 2


def exo_pair(batch, beta, label_smoothing=0.0, **params):
    """EXO (Ji et al. 2024, Eq. 16): KL(p_theta || p_label) over {chosen, rejected}, label (1 - eps, eps)."""
    import torch
    import torch.nn.functional as F

    if not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"exo_pair: label_smoothing must lie in (0, 1), got {label_smoothing} (the paper uses 1e-3)")
    logits = beta * _delta_score(batch)
    epsilon = torch.tensor(label_smoothing, device=logits.device)
    chosen = torch.sigmoid(logits) * (F.logsigmoid(logits) - torch.log1p(-epsilon))
    rejected = torch.sigmoid(-logits) * (F.logsigmoid(-logits) - torch.log(epsilon))
    return chosen + rejected


def nca_pair(batch, beta, **params):
    """NCA (Chen et al. 2024), pairwise: absolute rewards, pushing the rejected one down too."""
    import torch.nn.functional as F

    chosen, rejected = (beta * r for r in _logratios(batch))
    return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)


def robust(batch, beta, label_smoothing=0.0, **params):
    """Robust DPO (Chowdhury et al. 2024): unbiased under labels flipped with probability label_smoothing."""
    import torch.nn.functional as F

    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust: label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    logits = beta * _delta_score(batch)
    clean = -(1 - label_smoothing) * F.logsigmoid(logits)
    flipped = -label_smoothing * F.logsigmoid(-logits)
    return (clean - flipped) / (1 - 2 * label_smoothing)


def bco_pair(batch, beta, **params):
    """BCO on pairs (Jung et al. 2024) as TRL 1.16 computes it: chosen reward up, rejected down, no reward shift."""
    import torch.nn.functional as F

    chosen, rejected = (beta * r for r in _logratios(batch))
    return -F.logsigmoid(chosen) - F.logsigmoid(-rejected)


def sppo_hard(batch, beta, **params):
    """SPPO (Wu et al. 2024) with hard win probabilities: log-ratios regressed to +-1/(2 beta)."""
    chosen, rejected = _logratios(batch)
    return (chosen - 0.5 / beta) ** 2 + (rejected + 0.5 / beta) ** 2


def aot(batch, beta, label_smoothing=0.0, **params):
    """AOT (Melnyk et al. 2024), paired: policy and reference chosen-minus-rejected gaps, each sorted in the batch.

    Batch-level: it sorts across the pairs this process holds, as TRL does
    (under several processes each sorts its own part)."""
    import torch

    policy, _ = torch.sort(batch.chosen_logps - batch.rejected_logps, dim=0)
    reference, _ = torch.sort(batch.ref_chosen_logps - batch.ref_rejected_logps, dim=0)
    return _smoothed_sigmoid(beta * (policy - reference), label_smoothing)


def aot_unpaired(batch, beta, label_smoothing=0.0, **params):
    """AOT (Melnyk et al. 2024), unpaired: chosen and rejected log-ratios sorted separately within the batch."""
    import torch

    chosen, rejected = _logratios(batch)
    chosen, _ = torch.sort(chosen, dim=0)
    rejected, _ = torch.sort(rejected, dim=0)
    return _smoothed_sigmoid(beta * (chosen - rejected), label_smoothing)


def apo_zero(batch, beta, **params):
    """APO-zero (D'Oosterlinck et al. 2024, Eq. 7): chosen likelihood up, rejected down."""
    import torch

    chosen, rejected = _logratios(batch)
    return 1 - torch.sigmoid(beta * chosen) + torch.sigmoid(beta * rejected)


def apo_down(batch, beta, **params):
    """APO-down (D'Oosterlinck et al. 2024, Eq. 8): both likelihoods down, the rejected one more."""
    import torch

    chosen, rejected = _logratios(batch)
    return torch.sigmoid(beta * chosen) + 1 - torch.sigmoid(beta * (chosen - rejected))


def discopop(batch, beta, discopop_tau=0.05, **params):
    """DiscoPOP (Chris Lu et al. 2024, Eq. 5): logistic and exponential losses blended by sigma(logits / tau)."""
    import torch
    import torch.nn.functional as F

    logits = beta * _delta_score(batch)
    blend = torch.sigmoid(logits / discopop_tau)
    return -F.logsigmoid(logits) * (1 - blend) + torch.exp(-logits) * blend


def sft(batch, beta, **params):
    """Negative log-likelihood of the chosen completions, averaged over all their tokens in the batch.

    A batch-level token mean (not a mean of per-pair means), as TRL
    computes it; expanded to one value per pair, so the trainer's mean
    leaves it unchanged."""
    chosen = batch.chosen_token_logps[batch.chosen_token_mask]
    return (-chosen.mean()).expand(batch.chosen_logps.shape[0])


def sigmoid_norm(batch, beta, **params):
    """Length-normalised DPO: -log sigmoid(beta * per-token score gap)."""
    import torch.nn.functional as F

    chosen, rejected = _scores(batch)
    gap = _per_token(chosen, batch.chosen_lengths) - _per_token(rejected, batch.rejected_lengths)
    return -F.logsigmoid(beta * gap)


def simpo(batch, beta, gamma=0.5, **params):
    """SimPO (Meng et al. 2024): -log sigmoid(beta * per-token log-prob gap - gamma); no reference."""
    import torch.nn.functional as F

    gap = _per_token(batch.chosen_logps, batch.chosen_lengths) - _per_token(batch.rejected_logps, batch.rejected_lengths)
    return -F.logsigmoid(beta * gap - gamma)


# name, fn, params, modifiers, description; all need a reference except where noted below. A parameter
# named after a DPOConfig field defaults to TRL's default for it (label_smoothing 0.0, discopop_tau 0.05):
# the run's DPOConfig value reaches it in any case (adapters/loss_selection.py).
TRL_LOSSES = (
    ("sigmoid", sigmoid, {}, SCORED, "DPO: -log sigmoid(beta * margin)"),
    ("hinge", hinge, {}, SCORED, "SLiC hinge: max(0, 1 - beta * margin)"),
    ("ipo", ipo, {}, SCORED, "IPO: (per-token margin - 1/(2 beta))^2"),
    ("exo_pair", exo_pair, {"label_smoothing": 0.0}, SCORED, "EXO: reverse KL to the label distribution (1 - eps, eps)"),
    ("nca_pair", nca_pair, {}, LOGRATIO, "NCA: absolute rewards, chosen up and both pushed from the reference"),
    ("robust", robust, {"label_smoothing": 0.0}, SCORED,
     "Robust DPO: sigmoid loss debiased for label noise (label_smoothing = flip rate)"),
    ("bco_pair", bco_pair, {}, LOGRATIO, "BCO on pairs: -log sigma(beta r_w) - log sigma(-beta r_l)"),
    ("sppo_hard", sppo_hard, {}, LOGRATIO, "SPPO, hard labels: log-ratios regressed to +-1/(2 beta)"),
    ("aot", aot, {"label_smoothing": 0.0}, SORTED, "AOT paired: sorted policy vs reference gaps (batch-level)"),
    ("aot_unpaired", aot_unpaired, {"label_smoothing": 0.0}, SORTED,
     "AOT unpaired: sorted chosen vs rejected log-ratios (batch-level)"),
    ("apo_zero", apo_zero, {}, LOGRATIO, "APO-zero: chosen likelihood up, rejected down"),
    ("apo_down", apo_down, {}, LOGRATIO, "APO-down: both likelihoods down, rejected more"),
    ("discopop", discopop, {"discopop_tau": 0.05}, SCORED, "DiscoPOP: logistic/exponential blend"),
    ("sigmoid_norm", sigmoid_norm, {}, SCORED, "length-normalised DPO: -log sigmoid(beta * per-token margin)"),
)


@hookimpl
def register_losses():
    for name, fn, params, modifiers, description in TRL_LOSSES:
        yield Loss(name=name, fn=fn, params=params, modifiers=modifiers, description=description)
    yield Loss(
        name="sft",
        fn=sft,
        needs_reference=False,
        needs={"tokens"},
        modifiers=SCORED,
        description="NLL of the chosen completions (token mean over the batch); TRL's rpo_alpha replacement",
    )
    yield Loss(
        name="simpo",
        fn=simpo,
        needs_reference=False,
        params={"gamma": 0.5},
        description="SimPO: reference-free, per-token log-prob gap with target margin gamma",
    )
