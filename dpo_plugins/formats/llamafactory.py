"""LLaMA-Factory ranking datasets, alpaca and sharegpt styles.

Alpaca: ``instruction`` (+ ``input``, joined with a newline as LLaMA-Factory
does), ``chosen``, ``rejected`` strings, optional ``system`` and ``history``
(``[[question, answer], ...]``). Writing puts the whole last user turn in
``instruction``.

ShareGPT: ``conversations`` (``{"from", "value"}`` turns: ``system``,
``human``, ``gpt``, ``function_call``, ``observation``), ``chosen`` and
``rejected`` single ``{"from": "gpt" | "function_call", "value"}`` turns,
optional ``system`` and ``tools`` (a JSON string of function schemas).
Function calls map to OpenAI ``tool_calls`` (ids ``call_<turn>_<n>``) and
observations to ``tool`` messages answering them.
"""

from __future__ import annotations

import orjson

from ..records import PreferenceRecord, Problem, RecordError
from .extras import extra_fields, with_extras
from .shapes import answer_text, plain_turns, require, text_record

ALPACA_KEYS = ("instruction", "input", "chosen", "rejected", "system", "history")
SHAREGPT_KEYS = ("conversations", "chosen", "rejected", "system", "tools")


def _optional_text(row: dict, keys, problems: list) -> None:
    """Optional string fields: a number or list there is an error, not text to mangle."""
    for key in keys:
        if row.get(key) is not None and not isinstance(row[key], str):
            problems.append(Problem(key, f"must be a string, found {type(row[key]).__name__}", "schema"))


def alpaca_to_record(row: dict) -> PreferenceRecord:
    require(row, ("instruction", "chosen", "rejected"), str, "LLaMA-Factory alpaca")
    problems: list[Problem] = []
    _optional_text(row, ("input", "system"), problems)
    history = row.get("history") or []
    if not isinstance(history, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(text, str) for text in p) for p in history):
        problems.append(Problem("history", "must be a list of [question, answer] string pairs", "schema"))
    if problems:
        raise RecordError(problems)
    prompt = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    for question, answer in history:
        prompt += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    question = row["instruction"] + (f"\n{row['input']}" if row.get("input") else "")
    prompt.append({"role": "user", "content": question})
    return text_record(prompt, row["chosen"], row["rejected"], extra_fields(row, ALPACA_KEYS))


def alpaca_from_record(record: PreferenceRecord) -> dict:
    system, turns = plain_turns(record, "LLaMA-Factory alpaca", system=True)
    chosen, rejected = answer_text(record, "LLaMA-Factory alpaca")
    roles = [role for role, _ in turns]
    if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
        raise RecordError([Problem("prompt", "alpaca needs alternating user/assistant turns ending with user",
                                   "unrepresentable")])
    row = {"instruction": turns[-1][1], "input": "", "chosen": chosen, "rejected": rejected}
    if system is not None:
        row["system"] = system
    if len(turns) > 1:
        row["history"] = [[turns[i][1], turns[i + 1][1]] for i in range(0, len(turns) - 1, 2)]
    return with_extras(row, record.metadata, ALPACA_KEYS + ("question",))  # not also chatml.intel-like


def _sharegpt_message(turn, path: str, index: int, problems: list) -> dict | None:
    if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
        problems.append(Problem(path, 'each turn needs "from" and a string "value"', "schema"))
        return None
    source = turn.get("from")
    if source == "function_call":
        try:
            calls = orjson.loads(turn["value"])
        except orjson.JSONDecodeError:
            problems.append(Problem(f"{path}.value", "a function_call value must be JSON", "tool-calls"))
            return None
        calls = calls if isinstance(calls, list) else [calls]
        if not calls or not all(isinstance(call, dict) and isinstance(call.get("name"), str) for call in calls):
            problems.append(Problem(f"{path}.value", 'a function_call value holds {"name": ..., "arguments": ...} '
                                                     "calls with string names", "tool-calls"))
            return None
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{index}_{n}", "type": "function",
             "function": {"name": call.get("name"), "arguments": orjson.dumps(call.get("arguments", {})).decode()}}
            for n, call in enumerate(calls)]}
    roles = {"human": "user", "gpt": "assistant", "system": "system", "observation": "tool"}
    if not isinstance(source, str) or source not in roles:
        problems.append(Problem(f"{path}.from", f"{source!r} is not one of {', '.join(roles)}, function_call", "role"))
        return None
    return {"role": roles[source], "content": turn["value"]}


def _link_observations(messages: list) -> None:
    """Give each tool message the id of the call it answers (in order)."""
    pending: list = []
    for message in messages:
        if message["role"] == "assistant":
            pending = [call["id"] for call in message.get("tool_calls", [])]
        elif message["role"] == "tool" and pending:
            message["tool_call_id"] = pending.pop(0)


def sharegpt_to_record(row: dict) -> PreferenceRecord:
    require(row, ("conversations",), list, "LLaMA-Factory sharegpt")
    require(row, ("chosen", "rejected"), dict, "LLaMA-Factory sharegpt")
    problems: list[Problem] = []
    _optional_text(row, ("system",), problems)
    prompt = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    for index, turn in enumerate(row["conversations"]):
        message = _sharegpt_message(turn, f"conversations[{index}]", index, problems)
        if message:
            prompt.append(message)
    outputs = [_sharegpt_message(row[key], key, len(prompt), problems) for key in ("chosen", "rejected")]
    tools = None
    if row.get("tools"):
        try:
            declared = orjson.loads(row["tools"]) if isinstance(row["tools"], str) else row["tools"]
        except orjson.JSONDecodeError:
            declared = None
        if isinstance(declared, list) and all(isinstance(function, dict) for function in declared):
            tools = [{"type": "function", "function": function} for function in declared]
        else:
            problems.append(Problem("tools", "must be a JSON list of function schemas", "tools"))
    if problems:
        raise RecordError(problems)
    _link_observations(prompt)
    return PreferenceRecord(prompt=prompt, chosen=[outputs[0]], rejected=[outputs[1]], tools=tools,
                            metadata=extra_fields(row, SHAREGPT_KEYS))


def _to_turn(message: dict, path: str) -> dict:
    role, content = message.get("role"), message.get("content")
    if role == "assistant" and message.get("tool_calls"):
        calls = [_call(call, f"{path}.tool_calls[{n}]") for n, call in enumerate(message["tool_calls"])]
        return {"from": "function_call", "value": orjson.dumps(calls[0] if len(calls) == 1 else calls).decode()}
    names = {"user": "human", "assistant": "gpt", "tool": "observation", "system": "system"}
    if role not in names or not isinstance(content, str):
        raise RecordError([Problem(path, f"sharegpt holds plain text turns of {', '.join(names)}", "unrepresentable")])
    return {"from": names[role], "value": content}


def _call(call: dict, path: str) -> dict:
    """One OpenAI tool call as a LLaMA-Factory ``{"name", "arguments"}`` object (arguments as JSON, not text)."""
    function = call.get("function")
    arguments = function.get("arguments", "{}") if isinstance(function, dict) else None
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            arguments = None
    if not isinstance(function, dict) or arguments is None:
        raise RecordError([Problem(f"{path}.function", "sharegpt stores a call as a function name with JSON "
                                                       "arguments; this call has none", "unrepresentable")])
    return {"name": function.get("name"), "arguments": arguments}


def sharegpt_from_record(record: PreferenceRecord) -> dict:
    prompt = list(record.prompt)
    row: dict = {}
    if prompt and prompt[0].get("role") == "system" and isinstance(prompt[0].get("content"), str):
        row["system"] = prompt.pop(0)["content"]
    problems = []
    for key, output in (("chosen", record.chosen), ("rejected", record.rejected)):
        if len(output) != 1:
            problems.append(Problem(key, "sharegpt holds one answer turn per side", "unrepresentable"))
    if problems:
        raise RecordError(problems)
    row["conversations"] = [_to_turn(message, f"prompt[{i}]") for i, message in enumerate(prompt)]
    row["chosen"] = _to_turn(record.chosen[0], "chosen[0]")
    row["rejected"] = _to_turn(record.rejected[0], "rejected[0]")
    if record.tools:
        row["tools"] = orjson.dumps([tool.get("function") for tool in record.tools]).decode()
    return with_extras(row, record.metadata, SHAREGPT_KEYS + ("messages",))  # not also chat_template-like


def alpaca_detect(row: dict) -> bool:
    return isinstance(row.get("instruction"), str) and isinstance(row.get("chosen"), str)


def sharegpt_detect(row: dict) -> bool:
    return isinstance(row.get("conversations"), list) and isinstance(row.get("chosen"), dict)
