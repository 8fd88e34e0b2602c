"""How far a judge agrees with people: AlpacaEval's evaluator columns on human-labelled pairs.

Each pair (prompt, chosen, rejected) carries one human preference: chosen
is better. The judge sees every pair in both orders, which gives two
annotations in AlpacaEval's layout (``output_1`` shown first, ``preference``
in [1, 2], 1 = ``output_1`` better, 1.5 a draw, ``None`` when the judge
could not judge): (chosen, rejected) with human preference 1 and (rejected,
chosen) with human preference 2. A verdict a / b / tie is preference 1 / 2
/ 1.5; a probability ``p`` that the first is better is ``2 - p``.

On those annotations the columns are AlpacaEval's (``alpaca_eval.analyze``:
``get_metrics_evaluator`` and ``Analyzer``), under its names; the tests call
AlpacaEval's own functions on the same annotations and get the same values:

- ``Human agreement``: 100 x (1 - mean |judge preference - human
  preference|) over the parsed annotations: AlpacaEval's ``absolute``
  scoring rule, so a draw scores half and a probability its distance.
  **One difference of definition:** AlpacaEval scores an annotator against
  the mode of four *other* humans' labels of the same row (its humans agree
  with each other 65.7% of the time); here the target is the one label the
  dataset has. Numbers are comparable between judges on the same pairs,
  not with AlpacaEval's leaderboard.
- ``Human agreement 95% CI``: ours (AlpacaEval gives standard errors): a
  percentile bootstrap over *pairs* (both orders of a pair move together),
  10,000 resamples, seed 0.
- ``Proba. prefer longer``: among annotations whose preferred and other
  output differ by more than 30 characters, the share where the preferred is
  the longer. ``Proba. prefer lists``: among annotations where exactly one
  output contains a list, the share where it is the preferred one. (A draw
  counts in neither.) ``Proba. prefer 1``: ``2 - mean(preference)``, 0.5 for a judge
  without position bias. ``# parsed``: annotations with a preference.
- ``Time [seconds/1000 examples]`` / ``Price [$/1000 examples]``: per 1000
  annotations (one judge call each, AlpacaEval's unit); the time is what the
  answers took when first computed (cached answers keep their time), the
  price needs the judge's token counts and the prices per million tokens.
- ``position consistency`` (ours, as in ``dpo eval``): the share of pairs
  whose verdict survives swapping the outputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from dpo_plugins.errors import DpoPluginsError

from .stats import as_verdict, position_consistency
from .judging import judge_orders, prompt_text

FLOORS = ("longest", "random")
SIGNIFICANT_LENGTH_DELTA = 30  # characters, AlpacaEval's get_length_biases default
BOOTSTRAP_RESAMPLES = 10_000
# A line that starts a bullet ("-", "*", "•"), numbered ("1." / "1)") or lettered ("a." / "A)") list item
# followed by a word: AlpacaEval's `contains_list` rule (alpaca_eval.utils).
LIST_ITEM = re.compile(r"^\s*(?:[*•\-]\s*|\d+[.)]\s*|[a-zA-Z][.)]\s+)[^\w]*\w+", re.MULTILINE)
COLUMNS = ("Human agreement", "Human agreement 95% CI", "Proba. prefer longer", "Proba. prefer lists",
           "Proba. prefer 1", "# parsed", "position consistency", "Time [seconds/1000 examples]",
           "Price [$/1000 examples]")


@dataclass(frozen=True)
class Prices:
    """Dollars per million prompt / completion tokens."""

    prompt: float
    completion: float


def answer_text(value: Any) -> str:
    """A completion as text: a string, or the contents of its messages."""
    if isinstance(value, str):
        return value
    return "\n".join(str(message.get("content") or "") for message in value)


def labelled_pairs(rows: Sequence[Mapping[str, Any]], source: str):
    """``(prompts, chosen, rejected)`` texts of TRL rows; a pair with an empty answer is an error (all listed)."""
    prompts, chosen, rejected, problems = [], [], [], []
    for number, row in enumerate(rows, 1):
        texts = {field: answer_text(row[field]) for field in ("chosen", "rejected")}
        empty = [field for field, text in texts.items() if not text.strip()]
        problems += [f"{source}: pair {number}: $.{field}: empty answer; a judge cannot compare it" for field in empty]
        prompts.append(row["prompt"])
        chosen.append(texts["chosen"])
        rejected.append(texts["rejected"])
    if problems:
        raise DpoPluginsError("\n".join(problems))
    if not prompts:
        raise DpoPluginsError(f"{source}: no pairs to judge")
    return prompts, chosen, rejected


def preference_of(judgment) -> Optional[float]:
    """AlpacaEval's preference for one annotation from a judgment of (output_1, output_2) as (a, b)."""
    if judgment is None:
        return None
    if isinstance(judgment, str):
        return {"a": 1.0, "b": 2.0, "tie": 1.5}[judgment]
    return 2.0 - float(judgment)


def judge_check(judge: str, prompts, chosen, rejected, params: Mapping[str, Any] | None = None, cache: bool = True,
                prices: Prices | None = None, floors: Sequence[str] = FLOORS) -> dict:
    """``{"annotators": {name: columns}, "annotations": [...], ...}`` for the judge, then each floor."""
    annotators, annotations = {}, []
    for name, name_params in [(judge, params)] + [(floor, None) for floor in floors if floor != judge]:
        settings, provider, first, swapped = judge_orders(name, prompts, chosen, rejected, name_params, cache=cache)
        rows = annotation_rows(name, prompts, chosen, rejected, first, swapped, prices)
        columns = evaluator_columns(rows)
        columns["position consistency"] = _consistency(first.judgments, swapped.judgments)
        columns["answers from cache"] = sum(first.cached) + sum(swapped.cached)
        columns["provider"] = provider
        annotators[name] = columns
        annotations += rows
    return {"judge": judge, "n_pairs": len(prompts), "n_annotations": 2 * len(prompts), "annotators": annotators,
            "annotations": annotations, "definitions": DEFINITIONS}


def annotation_rows(annotator: str, prompts, chosen, rejected, first, swapped, prices: Prices | None = None) -> list:
    """Both orders of every pair in AlpacaEval's annotation layout, with the human preference."""
    rows = []
    for i, prompt in enumerate(prompts):
        for order, (one, two, human, answers) in enumerate(((chosen[i], rejected[i], 1.0, first),
                                                            (rejected[i], chosen[i], 2.0, swapped))):
            tokens = (answers.prompt_tokens[i], answers.completion_tokens[i])
            price = None
            if prices is not None and None not in tokens:
                price = (tokens[0] * prices.prompt + tokens[1] * prices.completion) / 1e6
            rows.append({"instruction": prompt_text(prompt), "output_1": one, "output_2": two, "annotator": annotator,
                         "preference": preference_of(answers.judgments[i]), "human_preference": human,
                         "pair": i, "order": "chosen first" if order == 0 else "rejected first",
                         "time_per_example": answers.seconds[i], "price_per_example": price,
                         "prompt_tokens": tokens[0], "completion_tokens": tokens[1]})
    return rows


def evaluator_columns(rows: Sequence[Mapping[str, Any]]) -> dict:
    """AlpacaEval's evaluator columns for one annotator's annotations (see the module doc)."""
    parsed = [r for r in rows if r["preference"] is not None]
    unique = _unique(rows)
    prices = [r["price_per_example"] for r in rows]
    return {
        "Human agreement": 100 * human_agreement(rows) if parsed else None,
        "Human agreement 95% CI": agreement_interval(rows),
        "Proba. prefer longer": prefer_longer(unique),
        "Proba. prefer lists": prefer_lists(unique),
        "Proba. prefer 1": 2 - sum(r["preference"] for r in parsed) / len(parsed) if parsed else None,
        "# parsed": len(parsed),
        "Time [seconds/1000 examples]": 1000 * sum(r["time_per_example"] for r in rows) / len(rows) if rows else None,
        "Price [$/1000 examples]": 1000 * sum(prices) / len(prices) if prices and None not in prices else None,
    }


def human_agreement(rows) -> float:
    """1 - mean |preference - human preference| over the parsed annotations (AlpacaEval's absolute rule)."""
    scores = [_score(r) for r in rows if r["preference"] is not None]
    return sum(scores) / len(scores)


def _score(row) -> float:
    return 1 - abs(row["preference"] - row["human_preference"])


def agreement_interval(rows, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Optional[list]:
    """95% percentile bootstrap of ``Human agreement`` (in percent), resampling pairs."""
    import numpy as np

    by_pair: dict = {}
    for row in rows:
        entry = by_pair.setdefault(row["pair"], [0.0, 0])
        if row["preference"] is not None:
            entry[0] += _score(row)
            entry[1] += 1
    sums = np.array([s for s, n in by_pair.values()], dtype=float)
    counts = np.array([n for s, n in by_pair.values()], dtype=float)
    if not counts.sum():
        return None
    rng, means = np.random.default_rng(seed), []
    chunk = max(1, 4_000_000 // len(sums))  # resamples at a time: memory stays bounded for any number of pairs
    for start in range(0, resamples, chunk):
        draws = rng.integers(0, len(sums), size=(min(chunk, resamples - start), len(sums)))
        parsed = counts[draws].sum(axis=1)
        means.append(sums[draws].sum(axis=1)[parsed > 0] / parsed[parsed > 0])
    low, high = np.percentile(np.concatenate(means), [2.5, 97.5])
    return [100 * float(low), 100 * float(high)]


def _unique(rows) -> list:
    """AlpacaEval drops duplicate (instruction, output_1, output_2) rows before the bias columns."""
    seen, out = set(), []
    for row in rows:
        key = (row["instruction"], row["output_1"], row["output_2"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _best_and_worse(row) -> tuple[str, str]:
    """AlpacaEval's reading: preferred = output_1 when 1 <= p < 1.5; other = output_1 when 1.5 < p <= 2.

    A draw (or no preference) makes both ``output_2``, so it counts in neither bias column.
    """
    p = row["preference"]
    best = row["output_1"] if p is not None and 1 <= p < 1.5 else row["output_2"]
    worse = row["output_1"] if p is not None and 1.5 < p <= 2 else row["output_2"]
    return best, worse


def prefer_longer(rows, delta: int = SIGNIFICANT_LENGTH_DELTA) -> Optional[float]:
    pairs = [_best_and_worse(r) for r in rows]
    longer = [len(b) > len(w) for b, w in pairs if abs(len(b) - len(w)) > delta]
    return sum(longer) / len(longer) if longer else None


def contains_list(text: str) -> bool:
    return LIST_ITEM.search(text) is not None


def prefer_lists(rows) -> Optional[float]:
    flags = [(contains_list(b), contains_list(w)) for b, w in (_best_and_worse(r) for r in rows)]
    either = [best for best, worse in flags if best != worse]
    return sum(either) / len(either) if either else None


def _consistency(first: Sequence, swapped: Sequence) -> Optional[float]:
    both = [(as_verdict(x), as_verdict(y)) for x, y in zip(first, swapped) if x is not None and y is not None]
    return position_consistency([x for x, _ in both], [y for _, y in both])


DEFINITIONS = {
    "Human agreement": "AlpacaEval's (analyze.Analyzer, absolute scoring rule): 100 x (1 - mean |judge preference - "
                       "human preference|) over the parsed annotations, each pair judged in both orders. Target: the "
                       "pair's ONE human label (chosen), not AlpacaEval's mode of 4 other humans' cross-annotations, "
                       "so values compare between judges on these pairs, not with AlpacaEval's leaderboard",
    "Human agreement 95% CI": f"percentile bootstrap over pairs, {BOOTSTRAP_RESAMPLES} resamples, seed 0",
    "Proba. prefer longer": f"AlpacaEval's: among annotations whose outputs differ by more than "
                            f"{SIGNIFICANT_LENGTH_DELTA} characters, the share where the preferred one is longer",
    "Proba. prefer lists": "AlpacaEval's: among annotations where exactly one output contains a list, the share "
                           "where the preferred one does",
    "Proba. prefer 1": "AlpacaEval's: 2 - mean(preference); 0.5 = no position bias",
    "# parsed": "AlpacaEval's: annotations with a preference (two per pair)",
    "position consistency": "share of pairs whose verdict survives swapping the outputs",
    "Time [seconds/1000 examples]": "seconds per 1000 annotations (one judge call each), as first computed",
    "Price [$/1000 examples]": "dollars per 1000 annotations from the judge's token counts and the given prices",
}
