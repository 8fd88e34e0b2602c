"""Hugging Face / TRL preference pairs: ``prompt``, ``chosen``, ``rejected``.

TRL's ``DPOTrainer`` takes two shapes — *standard* (strings) and
*conversational* (message lists) — each with an explicit ``prompt`` or an
implicit one (the shared prefix of full ``chosen``/``rejected``
transcripts, which TRL extracts with ``trl.extract_prompt``; this module
applies the same rule), plus an optional ``tools`` column (a list of
function schemas, or that list as a JSON string). Any other column is kept as
metadata and written back as a column. Rows written here train in
``DPOTrainer`` as they are.
"""

from __future__ import annotations

from typing import Optional

import orjson

from ..records import PreferenceRecord, Problem, RecordError
from .extras import extra_fields, with_extras
from .shapes import check_messages

COLUMNS = ("prompt", "chosen", "rejected", "tools", "parallel_tool_calls")


def _common_prefix(chosen, rejected):
    """TRL's ``extract_prompt`` split: the shared prefix, minus a trailing space.

    Unlike TRL, a difference at the very first character splits at 0 (TRL
    steps back to index -1 there, which slices ``"No"`` to ``"o"``).
    """
    index = 0
    for index in range(min(len(chosen), len(rejected))):
        if chosen[index] != rejected[index]:
            if index > 0 and chosen[index - 1] == " ":
                index -= 1
            break
    return chosen[:index], chosen[index:], rejected[index:]


def to_record(row: dict) -> PreferenceRecord:
    problems: list[Problem] = []
    for key in ("chosen", "rejected"):
        if key not in row:
            problems.append(Problem(key, "missing; rows need chosen and rejected (and usually prompt)", "schema"))
    if problems:
        raise RecordError(problems)
    chosen, rejected = row["chosen"], row["rejected"]
    text = isinstance(chosen, str)
    kind = str if text else list
    for key in ("prompt", "chosen", "rejected"):
        if key in row and not isinstance(row[key], kind):
            expected = "a string (standard format)" if text else "a list of messages (conversational format)"
            problems.append(Problem(key, f"must be {expected} like chosen, found {type(row[key]).__name__}", "schema"))
        elif key in row and not text:
            check_messages(row[key], key, problems)
    tools = row.get("tools")
    if isinstance(tools, str):
        try:
            tools = orjson.loads(tools)
        except orjson.JSONDecodeError:
            problems.append(Problem("tools", "a string tools column must hold JSON", "tools"))
    if tools is not None and not (isinstance(tools, list) and all(isinstance(tool, dict) for tool in tools)):
        problems.append(Problem("tools", "must be a list of function schemas (or one as a JSON string)", "tools"))
    parallel = row.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        problems.append(Problem("parallel_tool_calls", "must be true or false", "tools"))
    if problems:
        raise RecordError(problems)
    implicit = "prompt" not in row
    if implicit:
        prompt, chosen, rejected = _common_prefix(chosen, rejected)
    else:
        prompt = row["prompt"]
    if text:
        prompt, chosen, rejected = (
            [{"role": "user", "content": prompt}],
            [{"role": "assistant", "content": chosen}],
            [{"role": "assistant", "content": rejected}],
        )
    return PreferenceRecord(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        tools=tools,
        parallel_tool_calls=parallel,
        metadata=extra_fields(row, COLUMNS),
        text=text,
        implicit_prompt=implicit,
    )


def _only_text(messages: list, role: str, path: str) -> Optional[str]:
    if len(messages) == 1 and messages[0].get("role") == role and isinstance(messages[0].get("content"), str):
        if set(messages[0]) == {"role", "content"}:
            return messages[0]["content"]
    raise RecordError([Problem(path, f"a standard (string) row needs exactly one plain {role} message here", "schema")])


def from_record(record: PreferenceRecord) -> dict:
    prompt, chosen, rejected = record.prompt, record.chosen, record.rejected
    if record.text:
        prompt = _only_text(prompt, "user", "prompt")
        chosen = _only_text(chosen, "assistant", "chosen")
        rejected = _only_text(rejected, "assistant", "rejected")
    if record.implicit_prompt:
        row = {"chosen": prompt + chosen, "rejected": prompt + rejected}
    else:
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if record.tools is not None:
        row["tools"] = record.tools
    if record.parallel_tool_calls is not None:
        row["parallel_tool_calls"] = record.parallel_tool_calls
    # Extra columns named like other shapes' keys stay columns: hf -> hf is exact (such rows need --from hf).
    return with_extras(row, record.metadata, COLUMNS)


def looks_like_hh(row: dict) -> bool:
    chosen = row.get("chosen")
    return "prompt" not in row and isinstance(chosen, str) and "\n\nHuman:" in chosen and "\n\nAssistant:" in chosen


# Keys that mark the other built-in shapes whose chosen/rejected are also strings.
OTHER_SHAPES = ("instruction", "question", "conversations", "system", "chosen_model")


def detect(row: dict) -> bool:
    chosen = row.get("chosen")
    if "rejected" not in row or not isinstance(chosen, (str, list)) or looks_like_hh(row):
        return False
    if any(key in row for key in OTHER_SHAPES):
        return False
    prompt = row.get("prompt", chosen)
    return type(prompt) is type(chosen) and type(row["rejected"]) is type(chosen)
