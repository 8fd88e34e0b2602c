"""Helpers shared by the formats whose rows hold plain-text turns.

Most of the field's shapes (HH, LLaMA-Factory, Axolotl) can only hold
string turns and a single string answer per side; these helpers read such
rows into a record and, when writing, say precisely why a record does not
fit (a system message where none is allowed, a tool call, a multi-message
output) instead of dropping what does not fit.
"""

from __future__ import annotations

from typing import Iterable

from ..records import PreferenceRecord, Problem, RecordError


def require(row: dict, keys: Iterable[str], kind, what: str) -> None:
    """Raise listing every required key that is missing or not of ``kind``."""
    problems = []
    for key in keys:
        if key not in row:
            problems.append(Problem(key, f"missing; {what} rows need it", "schema"))
        elif not isinstance(row[key], kind):
            problems.append(Problem(key, f"must be a {getattr(kind, '__name__', 'list')}, found {type(row[key]).__name__}", "schema"))
    if problems:
        raise RecordError(problems)


def check_messages(value, path: str, problems: list) -> None:
    """Each message of ``value`` (a list) a dict of well-typed OpenAI-style fields.

    A wrong-typed field is an error here, when reading, rather than a crash
    or a mangled row in whichever format it is written to later.
    """
    for index, message in enumerate(value):
        if type(message) is dict and len(message) == 2 and type(message.get("content")) is str \
                and type(message.get("role")) is str:
            continue  # the common plain message, checked fast (conversion speed)
        where = f"{path}[{index}]"
        if not isinstance(message, dict):
            problems.append(Problem(where, "each message must be an object", "schema"))
            continue
        if not isinstance(message.get("role"), str):
            problems.append(Problem(f"{where}.role" if "role" in message else where,
                                    "must be a string" if "role" in message else "missing the `role` field", "role"))
        if not isinstance(message.get("content"), (str, list, type(None))):
            problems.append(Problem(f"{where}.content", "must be a string or a list of parts", "schema"))
        for key in ("name", "tool_call_id"):
            if key in message and not isinstance(message[key], str):
                problems.append(Problem(f"{where}.{key}", "must be a string", "schema"))
        if "tool_calls" in message:
            _check_calls(message["tool_calls"], f"{where}.tool_calls", problems)


def _check_calls(calls, path: str, problems: list) -> None:
    if not isinstance(calls, list):
        problems.append(Problem(path, "must be a list", "tool-calls"))
        return
    for index, call in enumerate(calls):
        where = f"{path}[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            problems.append(Problem(f"{where}.function", "a tool call needs a function object with a string name",
                                    "tool-calls"))
        elif not isinstance(function.get("arguments", ""), (str, dict)):
            problems.append(Problem(f"{where}.function.arguments", "must be a JSON string or an object", "tool-calls"))
        if isinstance(call, dict) and "id" in call and not isinstance(call["id"], str):
            problems.append(Problem(f"{where}.id", "must be a string", "tool-calls"))


def answer_text(record: PreferenceRecord, format_name: str) -> tuple[str, str]:
    """The chosen and rejected answers, each a single plain assistant message."""
    texts, problems = [], []
    for key, output in (("chosen", record.chosen), ("rejected", record.rejected)):
        if len(output) == 1 and output[0].get("role") == "assistant" and isinstance(output[0].get("content"), str) \
                and not output[0].get("tool_calls"):
            texts.append(output[0]["content"])
        else:
            problems.append(Problem(key, f"{format_name} holds one plain assistant answer per side; "
                                         f"this output has {len(output)} message(s) or tool calls", "unrepresentable"))
    if problems:
        raise RecordError(problems)
    return texts[0], texts[1]


def plain_turns(record: PreferenceRecord, format_name: str, system: bool) -> tuple[str | None, list[tuple[str, str]]]:
    """``(system text, [(role, text), ...])`` of a prompt of plain user/assistant turns."""
    problems, turns, system_text = [], [], None
    if record.tools:
        problems.append(Problem("tools", f"{format_name} cannot carry tools", "unrepresentable"))
    for index, message in enumerate(record.prompt):
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str) or message.get("tool_calls"):
            problems.append(Problem(f"prompt[{index}]", f"{format_name} holds only plain text turns", "unrepresentable"))
        elif role == "system" and system and index == 0:
            system_text = content
        elif role in ("user", "assistant"):
            turns.append((role, content))
        else:
            problems.append(Problem(f"prompt[{index}].role", f"{format_name} cannot hold a {role!r} message here", "unrepresentable"))
    if problems:
        raise RecordError(problems)
    return system_text, turns


def single_turn(record: PreferenceRecord, format_name: str, system: bool) -> tuple[str | None, str]:
    """``(system text, user text)`` of a one-question prompt."""
    system_text, turns = plain_turns(record, format_name, system)
    if len(turns) != 1 or turns[0][0] != "user":
        raise RecordError([Problem("prompt", f"{format_name} holds one user question; this prompt has "
                                             f"{len(turns)} turns", "unrepresentable")])
    return system_text, turns[0][1]


def text_record(prompt: list, chosen: str, rejected: str, metadata: dict) -> PreferenceRecord:
    return PreferenceRecord(
        prompt=prompt,
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
        metadata=metadata,
    )
