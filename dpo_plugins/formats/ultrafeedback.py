"""UltraFeedback binarized (and Axolotl's ``chatml.ultra``, the same shape).

``prompt`` (the question as a string), ``chosen`` and ``rejected`` (full
conversations, prompt turns included), ``messages`` (a copy of ``chosen``),
``prompt_id``, ``score_chosen``, ``score_rejected``. Scores and ids are kept
as metadata; ``prompt`` and ``messages`` are rebuilt on writing, and kept
verbatim only when they are not what rebuilding would give.
"""

from __future__ import annotations

from ..records import PreferenceRecord, Problem, RecordError
from .hf import _common_prefix
from .extras import extra_fields, with_extras
from .shapes import check_messages, require

DERIVED = ("prompt", "messages")
PAIR = ("chosen", "rejected")


def _question(prompt: list) -> str:
    users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users and isinstance(users[-1], str) else ""


def to_record(row: dict) -> PreferenceRecord:
    require(row, ("prompt",), str, "UltraFeedback")
    require(row, ("chosen", "rejected"), list, "UltraFeedback")
    problems: list[Problem] = []
    for key in PAIR:
        check_messages(row[key], key, problems)
    if problems:
        raise RecordError(problems)
    prompt, chosen, rejected = _common_prefix(row["chosen"], row["rejected"])
    if not prompt:
        raise RecordError([Problem("chosen", "chosen and rejected share no prompt turns", "prompt-mismatch")])
    metadata = extra_fields(row, PAIR)
    if metadata["prompt"] == _question(prompt):
        del metadata["prompt"]
    if metadata.get("messages", row["chosen"]) == row["chosen"]:
        metadata.pop("messages", None)
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected, tools=None, metadata=metadata)


def from_record(record: PreferenceRecord) -> dict:
    if record.tools:
        raise RecordError([Problem("tools", "UltraFeedback cannot carry tools", "unrepresentable")])
    chosen = record.prompt + record.chosen
    row = {"prompt": record.metadata.get("prompt", _question(record.prompt))}
    row.update({"chosen": chosen, "rejected": record.prompt + record.rejected,
                "messages": record.metadata.get("messages", chosen)})
    extras = {key: value for key, value in record.metadata.items() if key not in DERIVED}
    return with_extras(row, extras, PAIR + DERIVED)


def detect(row: dict) -> bool:
    return isinstance(row.get("prompt"), str) and isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list)
