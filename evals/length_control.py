"""Length-controlled win rates: AlpacaEval 2's GLMs, fitted with scikit-learn as AlpacaEval fits them.

AlpacaEval 2 (``alpaca_eval/metrics/glm_winrate.py``) fits a logistic model
of the preference on ``tanh(std_delta_len)`` (the baseline's length minus the
model's, in characters, over its sample standard deviation), the
instruction's difficulty and a baseline indicator, then reports the mean
predicted preference with the length term set to 0: the win rate the model
would have if its outputs were as long as the baseline's. The fit is
scikit-learn's L1 ``LogisticRegressionCV`` (liblinear, no intercept, five
``GroupKFold`` folds choosing C by the soft-label log loss, random_state
123) on soft labels (each row twice, labelled 1 and 0, weighted by the
preference and its complement). Three of its GLMs, by what the data allow:

- ``length_controlled_v1`` (AlpacaEval 2's leaderboard LC) needs
  AlpacaEval's ``df_gamed.csv``: instruction difficulties plus the
  annotations of two length-gamed baselines (prompted to be concise /
  verbose) that regularise the fit toward the baseline with weight
  ``lambda / 2`` (lambda 0.2);
- ``length_controlled_noreg``: the same features, no gamed rows; needs the
  instruction difficulties (``instruction_difficulty.csv`` or ``df_gamed.csv``);
- ``length_controlled_minimal``: length and the baseline term only; needs
  nothing, so it serves any prompts. It is *not* AlpacaEval 2's LC.

Each equals AlpacaEval's function of the same name on the same input
(``tests/test_alpaca_eval.py``, within 1e-6). Instruction ``i`` is the
``i``-th judgment (0-based), AlpacaEval's convention: a difficulty table
only means something for AlpacaEval's own 805 instructions in its order.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

from dpo_plugins.errors import DpoPluginsError

from .preferences import normalised

V1, NOREG, MINIMAL = "length_controlled_v1", "length_controlled_noreg", "length_controlled_minimal"
GAMED_BASELINE_LAMBDA = 0.2  # AlpacaEval 2's regularisation toward the baseline
N_SPLITS = 5
MIN_PAIRS = 20  # below this a five-fold length regression says nothing


@dataclass(frozen=True)
class DifficultyTable:
    """Instruction difficulties by instruction index, and (from ``df_gamed.csv``) the gamed baselines' rows.

    ``gamed`` rows are ``(preference in [0, 1] or None, std_delta_len, instruction_difficulty,
    not_gamed_baseline)``.
    """

    path: str
    difficulty: Mapping[int, float]
    gamed: tuple = ()


@dataclass(frozen=True)
class LengthControlled:
    """The result: ``value`` (a fraction) and its standard error, or ``None`` with the reason in ``note``."""

    value: float | None
    standard_error: float | None
    method: str | None
    note: str


def read_difficulty_table(path) -> DifficultyTable:
    """Read AlpacaEval's ``instruction_difficulty.csv`` (index, difficulty) or ``df_gamed.csv``.

    ``df_gamed.csv`` has the columns ``model``, ``index``, ``preference``
    (in [0, 1]), ``std_delta_len``, ``instruction_difficulty`` and
    ``not_gamed_baseline``; an instruction's difficulty is its first row's.
    Every bad line is reported as ``PATH:LINE: column: message``.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except OSError as error:
        raise DpoPluginsError(f"{path}: cannot read: {error.strerror or error}") from None
    if not rows:
        raise DpoPluginsError(f"{path}:1: $: empty file; expected AlpacaEval's instruction_difficulty.csv or df_gamed.csv")
    header = [name.strip() for name in rows[0]]
    gamed_columns = ("index", "preference", "std_delta_len", "instruction_difficulty")
    is_gamed = all(name in header for name in gamed_columns)
    if not is_gamed and len(header) != 2:
        raise DpoPluginsError(f"{path}:1: $: expected two columns (index, instruction_difficulty) or df_gamed.csv's "
                              f"columns {', '.join(gamed_columns)}; found {', '.join(header) or 'none'}")
    problems, difficulty, gamed = [], {}, []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            problems.append(f"{path}:{line}: $: {len(row)} columns, the header has {len(header)}")
            continue
        cells = dict(zip(header, row)) if is_gamed else {"index": row[0], "instruction_difficulty": row[1]}
        parsed = {}
        for name in gamed_columns if is_gamed else ("index", "instruction_difficulty"):
            value = _number(cells[name], integer=name == "index", allow_empty=name == "preference")
            if value is _BAD:
                problems.append(f"{path}:{line}: {name}: not a {'whole ' if name == 'index' else ''}number: {cells[name]!r}")
            parsed[name] = value
        if _BAD in parsed.values():
            continue
        difficulty.setdefault(parsed["index"], parsed["instruction_difficulty"])
        if is_gamed:
            flag = cells.get("not_gamed_baseline", "False").strip()
            if flag not in ("True", "False"):
                problems.append(f"{path}:{line}: not_gamed_baseline: expected True or False, found {flag!r}")
                continue
            gamed.append((parsed["preference"], parsed["std_delta_len"], parsed["instruction_difficulty"],
                          flag == "True"))
    if problems:
        raise DpoPluginsError("\n".join(problems))
    return DifficultyTable(str(path), difficulty, tuple(gamed))


_BAD = object()


def _number(text: str, integer: bool = False, allow_empty: bool = False):
    text = text.strip()
    if allow_empty and text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return _BAD
    if integer:
        return int(value) if value.is_integer() else _BAD
    return None if allow_empty and math.isnan(value) else value


def length_controlled(preferences: Sequence[float | None], model_lengths: Sequence[int],
                      baseline_lengths: Sequence[int], table: DifficultyTable | None = None,
                      same_generator: bool = False, min_pairs: int = MIN_PAIRS) -> LengthControlled:
    """The length-controlled win rate of AlpacaEval preferences (``output_2`` the model).

    The GLM is ``length_controlled_v1`` with a ``df_gamed.csv`` table,
    ``length_controlled_noreg`` with an ``instruction_difficulty.csv``
    one, ``length_controlled_minimal`` without. ``None`` (with the reason)
    for fewer than ``min_pairs`` preferences, equal length differences
    everywhere, or a fit that fails.
    """
    import numpy as np

    method = MINIMAL if table is None else (V1 if table.gamed else NOREG)
    values = normalised(preferences)
    n = sum(v is not None for v in values)
    if same_generator:  # AlpacaEval: a model against itself is 0.5 by construction
        return LengthControlled(0.5, 0.0, method, "the model is its own baseline: 0.5 by construction")
    if n < min_pairs:
        return LengthControlled(None, None, None, f"not computed: {n} preferences, fewer than {min_pairs} make a "
                                "length regression meaningless")
    delta = np.array(baseline_lengths, dtype=float) - np.array(model_lengths, dtype=float)
    spread = delta.std(ddof=1)
    if not spread > 0:
        return LengthControlled(None, None, None, "not computed: every pair has the same length difference, so "
                                "length cannot be separated out")
    difficulty = _difficulties(table, len(values)) if table is not None else np.zeros(len(values))
    std_delta_len = delta / spread
    train = [(v - 1, d, h, True) for v, d, h in zip(values, std_delta_len, difficulty) if v is not None]
    if method == V1:  # the gamed baselines' rows come first
        train = [row for row in table.gamed if row[0] is not None] + train
    features = _features(method, [(d, h) for _, d, h, _ in train], [ok for *_, ok in train])
    # a gamed baseline's row weighs lambda / 2 (there are two of them), every other row 1
    weights = np.array([1.0 if ok else GAMED_BASELINE_LAMBDA / 2 for *_, ok in train])
    try:
        model = _fit(features, np.array([p for p, *_ in train]), weights)
    except ValueError as error:
        return LengthControlled(None, None, None, f"not computed: the {method} fit failed: {error}")
    at_equal_length = _features(method, [(0.0, h) for h in difficulty], [True] * len(values))
    predicted = model.predict_proba(at_equal_length)[:, 1]
    coefficients = dict(zip(_columns(method), (float(c) for c in model.coef_[0])))
    note = (f"AlpacaEval's {method} GLM on {n} preferences, predicted at equal lengths; "
            + ", ".join(f"{k}={v:.4f}" for k, v in coefficients.items()))
    return LengthControlled(float(predicted.mean()), float(predicted.std(ddof=1) / math.sqrt(len(predicted))),
                            method, note)


def _difficulties(table: DifficultyTable, count: int):
    import numpy as np

    missing = [i for i in range(count) if i not in table.difficulty]
    if missing:
        raise DpoPluginsError(f"{table.path}: $: no instruction difficulty for instruction index "
                              f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''} "
                              f"({count} judgments, the table covers {len(table.difficulty)}); the table is for "
                              "AlpacaEval's own instructions in their order")
    return np.array([table.difficulty[i] for i in range(count)], dtype=float)


def _columns(method: str) -> tuple:
    """The GLM's terms, in AlpacaEval's formula order."""
    if method == MINIMAL:
        return ("tanh(std_delta_len)", "not_gamed_baseline")
    return ("tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline")


def _features(method: str, rows, not_gamed):
    import numpy as np

    columns = [np.tanh([d for d, _ in rows])]
    if method != MINIMAL:
        columns.append(np.array([h for _, h in rows], dtype=float))
    columns.append(np.array(not_gamed, dtype=float))
    return np.column_stack(columns)


def _fit(features, labels, weights):
    """scikit-learn's L1 LogisticRegressionCV on soft labels, configured as AlpacaEval configures it.

    Each row appears twice, labelled 1 with weight ``w * p`` and labelled 0
    with weight ``w * (1 - p)``; folds keep a row's two copies together, and
    C is chosen by the weighted log loss against the soft label.
    """
    import numpy as np
    import sklearn
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    count = len(labels)
    x = np.concatenate([features, features])
    y = np.concatenate([np.ones(count, dtype=int), np.zeros(count, dtype=int)])
    soft = np.concatenate([labels, 1 - labels])
    row_weight = np.concatenate([weights, weights])
    groups = np.concatenate([np.arange(count), np.arange(count)])
    scorer = make_scorer(_soft_log_loss, response_method="predict_proba", greater_is_better=False)
    l1 = {"l1_ratios": (1.0,), "use_legacy_attributes": False} if _at_least(sklearn.__version__, 1, 8) \
        else {"penalty": "l1"}
    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        model = LogisticRegressionCV(cv=GroupKFold(n_splits=N_SPLITS),
                                     scoring=scorer.set_score_request(soft_label=True, row_weight=True),
                                     solver="liblinear", fit_intercept=False, dual=False, random_state=123, **l1)
        model.set_fit_request(sample_weight=True)
        model.fit(x, y, sample_weight=soft * row_weight, groups=groups, soft_label=soft, row_weight=row_weight)
    return model


def _soft_log_loss(y_true, p_model, soft_label, row_weight):
    """Mean weighted cross-entropy between the soft label of each copy's row and the model's probability."""
    import numpy as np

    target = np.where(y_true == 1, soft_label, 1 - soft_label)  # both copies of a row carry its preference
    p_model = np.clip(p_model, 1e-15, 1 - 1e-15)
    return -np.mean(row_weight * (target * np.log(p_model) + (1 - target) * np.log(1 - p_model)))


def _at_least(version: str, major: int, minor: int) -> bool:
    parts = version.split(".")
    return (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)) >= (major, minor)
