"""Axolotl DPO dataset shapes.

``chatml.intel``: ``system`` (optional), ``question``, ``chosen``,
``rejected`` strings. ``chat_template.default``: ``messages`` (the prompt
conversation) with single-message ``chosen`` and ``rejected`` dicts.
(Axolotl's ``chatml.ultra`` is UltraFeedback's shape: use ``ultrafeedback``.)
"""

from __future__ import annotations

from ..records import PreferenceRecord, Problem, RecordError
from .extras import extra_fields, with_extras
from .shapes import answer_text, check_messages, require, single_turn, text_record

INTEL_KEYS = ("system", "question", "chosen", "rejected")
TEMPLATE_KEYS = ("messages", "chosen", "rejected")


def intel_to_record(row: dict) -> PreferenceRecord:
    require(row, ("question", "chosen", "rejected"), str, "Axolotl chatml.intel")
    if "system" in row and not isinstance(row["system"], (str, type(None))):
        raise RecordError([Problem("system", "must be a string", "schema")])
    prompt = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    prompt.append({"role": "user", "content": row["question"]})
    return text_record(prompt, row["chosen"], row["rejected"], extra_fields(row, INTEL_KEYS))


def intel_from_record(record: PreferenceRecord) -> dict:
    system, question = single_turn(record, "Axolotl chatml.intel", system=True)
    chosen, rejected = answer_text(record, "Axolotl chatml.intel")
    row = {"system": system} if system is not None else {}
    row.update({"question": question, "chosen": chosen, "rejected": rejected})
    return with_extras(row, record.metadata, INTEL_KEYS + ("instruction",))  # not also alpaca-like


def template_to_record(row: dict) -> PreferenceRecord:
    require(row, ("messages",), list, "Axolotl chat_template")
    require(row, ("chosen", "rejected"), dict, "Axolotl chat_template")
    problems: list[Problem] = []
    check_messages(row["messages"], "messages", problems)
    for key in ("chosen", "rejected"):
        check_messages([row[key]], key, problems)
    if problems:
        raise RecordError([Problem(p.path.replace("chosen[0]", "chosen").replace("rejected[0]", "rejected"),
                                   p.message, p.rule) for p in problems])
    return PreferenceRecord(prompt=row["messages"], chosen=[row["chosen"]], rejected=[row["rejected"]],
                            metadata=extra_fields(row, TEMPLATE_KEYS))


def template_from_record(record: PreferenceRecord) -> dict:
    problems = [Problem(key, "Axolotl chat_template holds one message per side", "unrepresentable")
                for key, output in (("chosen", record.chosen), ("rejected", record.rejected)) if len(output) != 1]
    if record.tools:
        problems.append(Problem("tools", "Axolotl chat_template rows cannot carry tools", "unrepresentable"))
    if problems:
        raise RecordError(problems)
    return with_extras({"messages": record.prompt, "chosen": record.chosen[0], "rejected": record.rejected[0]},
                       record.metadata, TEMPLATE_KEYS + ("conversations",))  # not also sharegpt-like


def intel_detect(row: dict) -> bool:
    return isinstance(row.get("question"), str) and isinstance(row.get("chosen"), str)


def template_detect(row: dict) -> bool:
    return isinstance(row.get("messages"), list) and isinstance(row.get("chosen"), dict) and "role" in row["chosen"]
