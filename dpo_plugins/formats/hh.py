"""Anthropic HH-RLHF: ``chosen`` and ``rejected`` full transcripts.

Each transcript is ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``; the prompt is
everything before the last ``"\\n\\nAssistant:"``, and must be the same in
both transcripts (rule ``prompt-mismatch``). One space after each speaker
label is part of the label, so writing a record back reproduces the text; a
label without it (``"\\n\\nHuman:hi"``) is an error, since the record could not
remember it and writing would add the space.
"""

from __future__ import annotations

import re

from ..records import Problem, RecordError
from .extras import extra_fields, with_extras
from .shapes import answer_text, plain_turns, require, text_record

KEYS = ("chosen", "rejected")
RESERVED = KEYS + ("prompt",)  # a top-level prompt would make the row look like hf

SPEAKER = re.compile(r"\n\n(Human|Assistant):")
ROLES = {"Human": "user", "Assistant": "assistant"}
LABELS = {"user": "Human", "assistant": "Assistant"}


def _turns(text: str, key: str, problems: list) -> list:
    parts = SPEAKER.split(text)
    if parts[0]:
        problems.append(Problem(key, 'a transcript must start with "\\n\\nHuman:"', "schema"))
        return []
    turns = []
    for label, body in zip(parts[1::2], parts[2::2]):
        if not body.startswith(" "):
            problems.append(Problem(key, f'"\\n\\n{label}:" must be followed by a space (it is part of the label)',
                                    "schema"))
            return []
        turns.append({"role": ROLES[label], "content": body[1:]})
    if not turns or turns[-1]["role"] != "assistant":
        problems.append(Problem(key, 'a transcript must end with an "\\n\\nAssistant:" turn', "schema"))
        return []
    return turns


def to_record(row: dict):
    require(row, ("chosen", "rejected"), str, "HH")
    problems: list[Problem] = []
    chosen = _turns(row["chosen"], "chosen", problems)
    rejected = _turns(row["rejected"], "rejected", problems)
    if problems:
        raise RecordError(problems)
    if chosen[:-1] != rejected[:-1]:
        raise RecordError([Problem("rejected", "the prompt (everything before the last Assistant turn) differs "
                                               "between the chosen and rejected transcripts", "prompt-mismatch")])
    return text_record(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], extra_fields(row, KEYS))


def from_record(record) -> dict:
    _, turns = plain_turns(record, "HH", system=False)
    chosen, rejected = answer_text(record, "HH")
    prompt = "".join(f"\n\n{LABELS[role]}: {text}" for role, text in turns)
    return with_extras({"chosen": f"{prompt}\n\nAssistant: {chosen}", "rejected": f"{prompt}\n\nAssistant: {rejected}"},
                       record.metadata, RESERVED)


def detect(row: dict) -> bool:
    from .hf import looks_like_hh

    return looks_like_hh(row) and isinstance(row.get("rejected"), str)
