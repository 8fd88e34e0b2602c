"""Built-in pair builders of ``dpo iterate``, registered through ``register_pair_builders`` like any plugin's.

Each ``fn(scores, margin=0.0)`` sees one prompt's sample scores and returns
``(pairs, dropped)``. A candidate pair whose scores differ by ``margin`` or
less is a tie (a near-tie when ``margin > 0``): it is dropped and counted,
never trained on, since a pair the judge cannot tell apart teaches DPO noise.

- ``best-vs-worst``: the highest- against the lowest-scored sample, one pair
  per prompt (RLHFlow Online-RLHF's ``max_min`` and OpenRLHF's
  ``train_iterative_dpo.sh``); the first sample wins among equal scores.
- ``all-above-margin``: every two samples whose scores differ by more than
  ``margin``, up to K(K-1)/2 pairs per prompt.
"""

from __future__ import annotations

from itertools import combinations

from ..hookspecs import hookimpl
from ..specs import PairBuilder


def best_vs_worst(scores, margin=0.0, **params):
    best = max(range(len(scores)), key=lambda i: scores[i])
    worst = min(range(len(scores)), key=lambda i: scores[i])
    if scores[best] - scores[worst] > float(margin):
        return [(best, worst)], 0
    return [], 1


def all_above_margin(scores, margin=0.0, **params):
    pairs, dropped = [], 0
    for i, j in combinations(range(len(scores)), 2):
        if abs(scores[i] - scores[j]) > float(margin):
            pairs.append((i, j) if scores[i] > scores[j] else (j, i))
        else:
            dropped += 1
    return pairs, dropped


@hookimpl
def register_pair_builders():
    yield PairBuilder(name="best-vs-worst", fn=best_vs_worst, params={"margin": 0.0},
                      description="highest- vs lowest-scored sample of each prompt (RLHFlow / OpenRLHF)")
    yield PairBuilder(name="all-above-margin", fn=all_above_margin, params={"margin": 0.0},
                      description="every two samples whose scores differ by more than margin")
