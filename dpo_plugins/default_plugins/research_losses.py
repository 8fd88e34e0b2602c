"""Published DPO variants that TRL, LLaMA-Factory, Axolotl and OpenRLHF do not ship as built-ins.

Plugins like any third party's: each reads only :class:`~dpo_plugins.specs.LossBatch`
sums. tests/test_research_losses.py checks each against its paper's
equation, written out independently.
"""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..specs import Loss
from .losses import _logratios


def dpop(batch, beta, dpop_lambda=50.0, **params):
    """DPO-Positive (Pal et al. 2024, "Smaug", Eq. 3).

    ``-log sigmoid(beta * (r_w - r_l - lambda * max(0, -r_w)))``: DPO can
    lower the chosen completion's likelihood as long as the rejected one
    falls faster; the penalty fires exactly when the chosen log-ratio
    ``r_w`` drops below 0 (the policy likes ``y_w`` less than the reference).
    """
    import torch
    import torch.nn.functional as F

    chosen, rejected = _logratios(batch)
    return -F.logsigmoid(beta * (chosen - rejected - dpop_lambda * torch.relu(-chosen)))


def cal_dpo(batch, beta, **params):
    """Cal-DPO (Xiao et al. 2024, Eq. 9): DPO's contrast plus a calibration of each log-ratio to +-1/(2 beta).

    ``-log sigmoid(r_w - r_l) + (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2``
    with ``r = log pi / pi_ref``: the implicit rewards are pinned to a scale
    (the chosen's likelihood rises, the rejected's falls) instead of only
    their difference being pushed apart.
    """
    import torch.nn.functional as F

    chosen, rejected = _logratios(batch)
    target = 1 / (2 * beta)
    return -F.logsigmoid(chosen - rejected) + (chosen - target) ** 2 + (rejected + target) ** 2


def rdpo(batch, beta, length_alpha=0.01, **params):
    """R-DPO (Park et al. 2024, "Disentangling Length from Quality in DPO"): a length margin inside DPO.

    ``-log sigmoid(beta * (r_w - r_l) + alpha * (|y_w| - |y_l|))``: a longer
    chosen completion needs a smaller log-ratio gap, so the policy gains
    nothing by preferring length itself (alpha is tuned per dataset).
    """
    import torch.nn.functional as F

    chosen, rejected = _logratios(batch)
    return -F.logsigmoid(beta * (chosen - rejected) + length_alpha * (batch.chosen_lengths - batch.rejected_lengths))


@hookimpl
def register_losses():
    yield Loss(
        name="dpop",
        fn=dpop,
        params={"dpop_lambda": 50.0},
        modifiers={"weighting", "ld_alpha"},
        description="DPO-Positive (Smaug): DPO + penalty when the chosen log-ratio falls below 0",
    )
    yield Loss(
        name="cal_dpo",
        fn=cal_dpo,
        modifiers={"weighting", "ld_alpha"},
        description="Cal-DPO: DPO contrast + log-ratios calibrated to +-1/(2 beta)",
    )
    yield Loss(
        name="rdpo",
        fn=rdpo,
        params={"length_alpha": 0.01},
        modifiers={"weighting", "ld_alpha"},
        description="R-DPO: DPO with a length margin alpha * (|y_w| - |y_l|) against verbosity",
    )
