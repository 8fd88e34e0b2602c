"""Reference-free preference losses, as TRL's experimental ``CPOTrainer`` / ``ORPOTrainer`` compute them.

No reference model is loaded for these (``needs_reference=False``): each
reads only the policy's log-probs. ``cpo`` and ``alphapo`` equal
``CPOTrainer``'s loss (``loss_type="sigmoid"`` and ``"alphapo"``) and
``orpo``'s odds-ratio term equals ``ORPOTrainer.odds_ratio_loss`` on the
same batch (tests/test_reference_free_losses.py). One difference, on
purpose: TRL's ORPO takes its NLL over prompt and completion, ``orpo`` here
over the chosen completion only, as the ORPO paper defines ``L_SFT`` (a loss
sees completion tokens only).
"""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..specs import Loss
from .losses import _per_token, _smoothed_sigmoid


def _chosen_nll(batch):
    """Mean negative log-likelihood over every chosen completion token of the batch (CPO's cross-entropy)."""
    return -batch.chosen_token_logps[batch.chosen_token_mask].mean()


def _mean_logps(batch):
    return _per_token(batch.chosen_logps, batch.chosen_lengths), _per_token(batch.rejected_logps, batch.rejected_lengths)


def cpo(batch, beta, cpo_alpha=1.0, label_smoothing=0.0, **params):
    """CPO (Xu et al. 2024, Eq. 3 + NLL): -log sigmoid(beta * (log pi(y_w) - log pi(y_l))) + cpo_alpha * NLL(y_w)."""
    loss = _smoothed_sigmoid(beta * (batch.chosen_logps - batch.rejected_logps), label_smoothing)
    if cpo_alpha:
        nll = _chosen_nll(batch)
        return loss + cpo_alpha * nll, {"nll_loss": nll.detach()}
    return loss


def alphapo(batch, beta, alpha=0.25, gamma=0.5, label_smoothing=0.0, **params):
    """AlphaPO (Gupta et al. 2025): SimPO with rewards (1 - p^-alpha) / alpha of the per-token mean log-prob p.

    As CPOTrainer's ``loss_type="alphapo"`` (simpo with ``cpo_alpha=0``):
    margin ``r_w - r_l - gamma / beta``, scaled by beta."""
    import torch

    if alpha == 0:
        raise ValueError("alphapo: alpha must be non-zero (alpha -> 0 is simpo)")
    chosen, rejected = (
        (1 - torch.exp(logps).pow(-alpha)) / alpha for logps in _mean_logps(batch)
    )
    return _smoothed_sigmoid(beta * (chosen - rejected - gamma / beta), label_smoothing)


def _log1mexp(x):
    """log(1 - exp(x)) for x < 0, accurate on both sides of -ln 2."""
    import torch

    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo(batch, beta, **params):
    """ORPO (Hong et al. 2024): NLL(y_w) - beta * log sigmoid(log odds(y_w) - log odds(y_l)).

    Odds of the per-token mean log-prob ``p``: ``log(p / (1 - p))``; beta is
    ORPO's lambda. The odds-ratio term is a per-pair value; the NLL is the
    chosen tokens' mean over the batch."""
    import torch.nn.functional as F

    chosen, rejected = (logps.float() for logps in _mean_logps(batch))
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    ratio = F.logsigmoid(log_odds)
    nll = _chosen_nll(batch)
    metrics = {"nll_loss": nll.detach(), "log_odds_ratio": ratio.detach().mean(), "log_odds_chosen": log_odds.detach().mean()}
    return nll - beta * ratio, metrics


@hookimpl
def register_losses():
    yield Loss(
        name="cpo",
        fn=cpo,
        needs_reference=False,
        needs={"tokens"},
        params={"cpo_alpha": 1.0, "label_smoothing": 0.0},
        description="CPO: reference-free sigmoid on policy log-probs + cpo_alpha * NLL of the chosen",
    )
    yield Loss(
        name="alphapo",
        fn=alphapo,
        needs_reference=False,
        params={"alpha": 0.25, "gamma": 0.5, "label_smoothing": 0.0},
        description="AlphaPO: SimPO with the reward shaped by (1 - p^-alpha) / alpha",
    )
    yield Loss(
        name="orpo",
        fn=orpo,
        needs_reference=False,
        needs={"tokens"},
        description="ORPO: NLL of the chosen - beta * log sigmoid(log odds ratio); reference-free",
    )
