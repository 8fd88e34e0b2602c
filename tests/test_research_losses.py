"""Losses no anchor framework ships (DPOP, Cal-DPO, R-DPO) against their papers' equations.

Each paper equation is written out here pair by pair in plain Python floats,
independently of the plugin's tensor code, and the plugin must agree on a
batch with both signs of every log-ratio and unequal lengths.
"""

from __future__ import annotations

import math

import pytest

from dpo_plugins.plugins import get_loss
from dpo_plugins.specs import LossBatch

# (policy chosen, policy rejected, ref chosen, ref rejected, |y_w|, |y_l|): summed log-probs per pair
PAIRS = [
    (-12.0, -15.0, -11.0, -14.5, 6, 9),  # chosen log-ratio < 0: DPOP's penalty fires
    (-10.0, -18.0, -11.0, -14.0, 5, 12),
    (-20.0, -9.0, -19.5, -10.0, 14, 4),
    (-7.5, -7.5, -7.5, -7.5, 3, 3),
]


def batch():
    import torch

    columns = [torch.tensor(column, dtype=torch.float64) for column in zip(*PAIRS)]
    return LossBatch(*columns)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def expected(per_pair):
    return [per_pair(pc - rc, pr - rr, lw, ll) for pc, pr, rc, rr, lw, ll in PAIRS]


@pytest.mark.parametrize(
    "name, params, beta, equation",
    [
        # Pal et al. 2024, Eq. 3
        ("dpop", {"dpop_lambda": 50.0}, 0.1,
         lambda b, p: lambda w, l, lw, ll: -log_sigmoid(b * (w - l - p["dpop_lambda"] * max(0.0, -w)))),
        ("dpop", {"dpop_lambda": 5.0}, 0.3,
         lambda b, p: lambda w, l, lw, ll: -log_sigmoid(b * (w - l - p["dpop_lambda"] * max(0.0, -w)))),
        # Xiao et al. 2024, Eq. 9
        ("cal_dpo", {}, 0.1,
         lambda b, p: lambda w, l, lw, ll: -log_sigmoid(w - l) + (w - 1 / (2 * b)) ** 2 + (l + 1 / (2 * b)) ** 2),
        # Park et al. 2024, R-DPO
        ("rdpo", {"length_alpha": 0.05}, 0.1,
         lambda b, p: lambda w, l, lw, ll: -log_sigmoid(b * (w - l) + p["length_alpha"] * (lw - ll))),
    ],
)
def test_research_losses_follow_their_papers(name, params, beta, equation):
    values = get_loss(name).fn(batch(), beta, **params)
    assert values.tolist() == pytest.approx(expected(equation(beta, params)), abs=1e-12)


def test_dpop_is_dpo_while_the_chosen_log_ratio_is_not_negative():
    sigmoid = get_loss("sigmoid").fn(batch(), 0.1)
    dpop = get_loss("dpop").fn(batch(), 0.1, dpop_lambda=50.0)
    penalised = [pc - rc < 0 for pc, _, rc, _, _, _ in PAIRS]
    assert penalised == [True, False, True, False]
    for i, fires in enumerate(penalised):
        if fires:
            assert dpop[i] > sigmoid[i] + 0.5
        else:
            assert dpop[i].item() == pytest.approx(sigmoid[i].item(), abs=1e-12)


def test_research_losses_train_with_the_packed_forward(tokenizer, tmp_path):
    """A weighted combination of the three trains (loss moves, reference checked at step 0)."""
    from test_train import dpo_config, make_trainer, step_losses

    from dpo_plugins.adapters.trl import PluginDPOTrainer

    trainer = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "research", loss_type=["dpop", "cal_dpo", "rdpo"],
                                                                   loss_weights=[1.0, 0.1, 1.0], beta=0.5))
    trainer.train()
    losses = step_losses(trainer)
    assert len(losses) == 3 and len({round(x, 5) for x in losses}) == 3
