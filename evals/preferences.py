"""AlpacaEval's head-to-head numbers from per-instruction preferences.

A preference is AlpacaEval's encoding of one judgment: a float in ``[1, 2]``
where 1 means the baseline (``output_1``) won, 2 the model (``output_2``),
1.5 a draw and anything between a judge's probability (``1 + P(model
better)``, as AlpacaEval's weighted annotators give); 0 is AlpacaEval's
older spelling of a draw, and ``None`` a judgment that failed.

The definitions are AlpacaEval 0.6's (``metrics/helpers.py``), so its
leaderboard numbers are reproduced exactly; ``tests/test_alpaca_eval.py``
asserts equality with ``alpaca_eval.metrics.get_winrate``. Rates here are
fractions in ``[0, 1]``; AlpacaEval prints them times 100.
"""

from __future__ import annotations

import math
from typing import Sequence

DRAW = 1.5


def policy_preference(outcome: str) -> float:
    """The AlpacaEval preference of a discrete outcome for the policy: win 2, tie 1.5, loss 1."""
    return {"win": 2.0, "tie": DRAW, "loss": 1.0}[outcome]


def normalised(preferences: Sequence[float | None]) -> list[float | None]:
    """The legacy draw ``0`` read as ``1.5``; ``None`` (and NaN) kept as ``None``."""
    out = []
    for value in preferences:
        if value is None or math.isnan(value):
            out.append(None)
        else:
            out.append(DRAW if value == 0 else float(value))
    return out


def valid_preference(value) -> bool:
    """Whether ``value`` is a preference AlpacaEval counts: ``None``, 0, or a number in ``[1, 2]``."""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return False
    return value == 0 or 1 <= value <= 2


def head_to_head(preferences: Sequence[float | None]) -> dict:
    """``n_total``, ``n_wins``, ``n_wins_base``, ``n_draws``, ``n_null``, ``win_rate``, ``standard_error``,
    ``discrete_win_rate``.

    - ``win_rate``: the mean of ``preference - 1`` over the non-null
      preferences (a continuous preference counts as that fraction of a win);
    - ``standard_error``: its standard error of the mean (sample standard
      deviation, ddof 1, over sqrt(n)); ``None`` with fewer than two;
    - ``discrete_win_rate``: each preference rounded to a win or a loss
      (exactly 1.5 stays a draw, counted half), then averaged;
    - ``n_wins`` / ``n_wins_base``: preferences above / below 1.5;
      ``n_draws``: exactly 1.5; ``n_total``: the non-null ones; ``n_null``:
      judgments without a preference, which count in no rate.
    """
    import numpy as np

    values = normalised(preferences)
    kept = np.array([v for v in values if v is not None], dtype=float) - 1
    n = len(kept)
    discrete = np.array([0.5 if v == 0.5 else float(round(v + 1) - 1) for v in kept], dtype=float)
    return {
        "n_total": n,
        "n_wins": int((kept > 0.5).sum()),
        "n_wins_base": int((kept < 0.5).sum()),
        "n_draws": int((kept == 0.5).sum()),
        "n_null": len(values) - n,
        "win_rate": float(kept.mean()) if n else None,
        "standard_error": float(kept.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "discrete_win_rate": float(discrete.mean()) if n else None,
    }
