"""Judgments in and out: AlpacaEval's ``annotations.json`` / ``model_outputs.json`` and ``dpo eval``'s judgments.

``dpo winrate`` recomputes win rates from either layout without running a
model; ``dpo eval --alpaca-eval-export`` writes AlpacaEval's, so its
generations and judgments can be handed to AlpacaEval itself.

- AlpacaEval: an array of objects with ``instruction``, ``output_1`` (the
  baseline), ``output_2`` (the model), ``generator_1``, ``generator_2`` and
  ``preference`` (``[1, 2]``, 1.5 a draw, 0 AlpacaEval's older draw, or
  null when the annotator failed).
- ``dpo eval`` (``generations.jsonl``): ``prompt``, ``policy_output``,
  ``baseline_output`` and ``preference`` in the same encoding (files written
  before preferences existed have only ``outcome``: win, tie or loss).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from dpo_plugins.atomic import write_text
from dpo_plugins.errors import DpoPluginsError

from .preferences import policy_preference, valid_preference

OUTCOMES = ("win", "tie", "loss")


@dataclass(frozen=True)
class Judgment:
    """One instruction's judgment, in AlpacaEval's terms (output_1 the baseline, output_2 the model)."""

    instruction: Any
    output_1: str
    output_2: str
    preference: float | None
    generator_1: str | None = None
    generator_2: str | None = None


def read_judgments(path) -> list[Judgment]:
    """Every judgment of an AlpacaEval annotations file or a ``dpo eval`` judgments file, in file order.

    Every bad row is listed as ``PATH:N: json.path: message`` (N is the line
    of a JSONL file, the 1-based element of a JSON array) and nothing is
    returned; several models, or several baselines, in one file are an error too.
    """
    from dpo_plugins.formats.files import read_rows
    from dpo_plugins.records import Problem

    judgments, problems = [], []
    for number, row in read_rows(path):
        where = f"{path}:{number}"
        if isinstance(row, Problem):
            problems.append(f"{where}: {row.path}: {row.message}")
            continue
        found, row_problems = _judgment(row)
        problems += [f"{where}: {p}" for p in row_problems]
        if found is not None:
            judgments.append(found)
    if not judgments and not problems:
        problems.append(f"{path}: $: no judgments")
    for field, what in (("generator_2", "models"), ("generator_1", "baselines")):
        names = sorted({getattr(j, field) for j in judgments if getattr(j, field) is not None})
        if len(names) > 1:
            problems.append(f"{path}: $[*].{field}: judgments of several {what} ({', '.join(names)}); "
                            "a win rate is one model's against one baseline")
    if problems:
        raise DpoPluginsError("\n".join(problems))
    return judgments


def _judgment(row: dict) -> tuple[Judgment | None, list[str]]:
    alpaca = "output_1" in row or "output_2" in row
    if alpaca:
        texts = {"output_1": "output_1", "output_2": "output_2"}
    elif "policy_output" in row or "baseline_output" in row:
        texts = {"output_1": "baseline_output", "output_2": "policy_output"}
    else:
        return None, ["$: neither AlpacaEval's output_1/output_2 nor dpo eval's policy_output/baseline_output"]
    problems = [f"$.{field}: missing or not a string" for field in texts.values() if not isinstance(row.get(field), str)]
    for field in ("generator_1", "generator_2"):
        if row.get(field) is not None and not isinstance(row[field], str):
            problems.append(f"$.{field}: not a string")
    if "preference" in row:
        preference = row["preference"]
        if not valid_preference(preference):
            problems.append(f"$.preference: {json.dumps(preference)} is not a preference: expected a number in "
                            "[1, 2] (1 the baseline wins, 2 the model, 1.5 a draw), 0 (a draw) or null")
    elif not alpaca and row.get("outcome") in OUTCOMES:
        preference = policy_preference(row["outcome"])
    else:
        problems.append("$.preference: missing" + ("" if alpaca else " (and no outcome win/tie/loss)"))
    if problems:
        return None, problems
    instruction = row.get("instruction", row.get("prompt"))
    return Judgment(instruction, row[texts["output_1"]], row[texts["output_2"]],
                    None if preference is None else float(preference), row.get("generator_1"),
                    row.get("generator_2")), []


def write_alpaca_eval(directory, instructions: Sequence[Any], model_outputs: Sequence[str],
                      baseline_outputs: Sequence[str], preferences: Sequence[float | None], generator: str,
                      baseline: str, annotator: str, dataset: str = "dpo-plugins") -> list[Path]:
    """Write ``model_outputs.json`` and ``annotations.json`` in AlpacaEval's layout into ``directory``.

    Chat prompts become their text (AlpacaEval's instructions are strings).
    Each file is written next to its target and renamed into place.
    """
    from .judging import prompt_text

    texts = [prompt_text(i) for i in instructions]
    outputs = [{"dataset": dataset, "instruction": t, "output": o, "generator": generator}
               for t, o in zip(texts, model_outputs)]
    annotations = [{"dataset": dataset, "instruction": t, "output_1": b, "generator_1": baseline, "output_2": o,
                    "generator_2": generator, "annotator": annotator, "preference": p}
                   for t, o, b, p in zip(texts, model_outputs, baseline_outputs, preferences)]
    written = []
    for name, value in (("model_outputs.json", outputs), ("annotations.json", annotations)):
        write_text(Path(directory) / name, json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
        written.append(Path(directory) / name)
    return written


def export_judgments(directory, generation_rows: Sequence[dict], metrics: dict) -> list[Path]:
    """``dpo eval``'s judged generations as AlpacaEval files (the policy is ``generator_2``)."""
    return write_alpaca_eval(directory, [r["prompt"] for r in generation_rows],
                             [r["policy_output"] for r in generation_rows],
                             [r["baseline_output"] for r in generation_rows],
                             [r["preference"] for r in generation_rows], str(metrics.get("model")),
                             str(metrics.get("baseline")), str(metrics.get("judge")))
