"""Azure OpenAI / OpenAI preference (DPO) fine-tuning JSONL.

One object per line: ``input`` (``messages``, optional ``tools`` and
``parallel_tool_calls``), ``preferred_output`` and ``non_preferred_output``
(message lists). The two formats share the schema and differ in one rule,
their *profile*: Azure allows multi-message outputs (assistant tool call ->
tool result -> assistant), OpenAI wants exactly one assistant message per
output. Every rule (REFERENCE §A) is checked when reading and again on
every row written, so a record the target cannot represent is an error for
its line, never silently altered. Each rule's name is the ``rule`` of the
problems it reports; ``docs/formats.md`` lists them with examples.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

import orjson

from ..records import WARNING, PreferenceRecord, Problem, RecordError
from .extras import extra_fields, with_extras
from .lint import text_of

TOP_LEVEL = ("input", "preferred_output", "non_preferred_output")
INPUT_KEYS = ("messages", "tools", "parallel_tool_calls")
MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id", "weight", "refusal"}
INPUT_ROLES = ("system", "developer", "user", "assistant", "tool")
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MIN_EXAMPLES = 10
MAX_FILE_BYTES = 512 * 1024 * 1024
EXAMPLE_TOKEN_LIMIT = 65_536  # tokens per example
OUTPUTS = ("preferred_output", "non_preferred_output")
PLAIN_ROLES = frozenset(("system", "developer", "user", "assistant"))


class _Checker:
    """Collects every problem of one row (instead of stopping at the first)."""

    def __init__(self, profile: str):
        self.profile = profile
        self.problems: list[Problem] = []
        self.tool_names: Optional[set] = None

    def add(self, path: str, message: str, rule: str) -> None:
        self.problems.append(Problem(path, message, rule))

    # -- the row ---------------------------------------------------------
    def row(self, row: dict) -> None:
        for key in TOP_LEVEL:
            if key not in row:
                self.add(key, "missing; each line needs input, preferred_output and non_preferred_output", "schema")
        source = row.get("input")
        if "input" in row:
            if isinstance(source, dict):
                self.input(source)
            else:
                self.add("input", "the `input` field must be an object", "schema")
        for key in OUTPUTS:
            if key in row:
                self.output(row[key], key)

    def input(self, source: dict) -> None:
        for key in source:
            if key not in INPUT_KEYS:
                self.add(f"input.{key}", "unknown field; input holds messages, tools and parallel_tool_calls", "schema")
        if "tools" in source:
            self.tools(source["tools"])
        if "parallel_tool_calls" in source and not isinstance(source["parallel_tool_calls"], bool):
            self.add("input.parallel_tool_calls", "must be true or false", "tools")
        messages = source.get("messages")
        if "messages" not in source:
            self.add("input", "must contain a `messages` field", "schema")
        elif not isinstance(messages, list):
            self.add("input.messages", "must be a list", "schema")
        elif not messages:
            self.add("input.messages", "must contain at least one message", "schema")
        else:
            self.input_messages(messages)

    def tools(self, tools) -> None:
        if not isinstance(tools, list):
            self.add("input.tools", "must be a list", "tools")
            return
        self.tool_names = set()
        for index, tool in enumerate(tools):
            path = f"input.tools[{index}]"
            if not isinstance(tool, dict):
                self.add(path, "must be an object", "tools")
                continue
            if tool.get("type") != "function":
                self.add(f"{path}.type", f'must be "function", found {tool.get("type")!r}', "tools")
            function = tool.get("function")
            if not isinstance(function, dict):
                self.add(f"{path}.function", "must be an object with name, description, parameters", "tools")
                continue
            name = function.get("name")
            if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
                self.add(f"{path}.function.name", f"{name!r}: names are 1-64 characters of A-Z a-z 0-9 _ -", "tool-name")
            elif name in self.tool_names:
                self.add(f"{path}.function.name", f"{name!r} is declared twice", "tool-name")
            else:
                self.tool_names.add(name)
            if "description" in function and not isinstance(function["description"], str):
                self.add(f"{path}.function.description", "must be a string", "tools")
            if "parameters" in function and not isinstance(function["parameters"], dict):
                self.add(f"{path}.function.parameters", "must be a JSON schema object", "tools")
            if "strict" in function and not isinstance(function["strict"], bool):
                self.add(f"{path}.function.strict", "must be true or false", "tools")

    # -- messages --------------------------------------------------------
    def message(self, message, path: str, roles: tuple) -> Optional[str]:
        """Check one message's fields; return its role when it is usable."""
        if not isinstance(message, dict):
            self.add(path, "each message must be an object", "schema")
            return None
        for key in message:
            if key not in MESSAGE_KEYS:
                self.add(f"{path}.{key}", "unknown message field", "schema")
        role = message.get("role")
        if "role" not in message:
            self.add(path, "missing the `role` field", "role")
            return None
        if role not in roles:
            self.add(f"{path}.role", f"{role!r} is not allowed here (allowed: {', '.join(roles)})", "role")
            return None
        self.content(message, path, role)
        if "tool_calls" in message:
            if role != "assistant":
                self.add(f"{path}.tool_calls", "only assistant messages make tool calls", "tool-calls")
            else:
                self.tool_calls(message["tool_calls"], f"{path}.tool_calls")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            self.add(f"{path}.tool_call_id", "a tool message needs the string id of the call it answers", "tool-calls")
        if "name" in message and not isinstance(message["name"], str):
            self.add(f"{path}.name", "must be a string", "schema")
        return role

    def content(self, message: dict, path: str, role: str) -> None:
        content = message.get("content")
        calls = message.get("tool_calls")
        if content is None:
            if not (role == "assistant" and calls):
                self.add(f"{path}.content", "missing content (only an assistant tool call may omit it)", "schema")
            return
        if isinstance(content, str):
            return
        if not isinstance(content, list):
            self.add(f"{path}.content", "must be a string or a list of text parts", "schema")
            return
        for index, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                self.add(f"{path}.content[{index}]", f"only text is supported, found a part of type {kind or type(part).__name__}", "text-only")
            elif not isinstance(part.get("text"), str):
                self.add(f"{path}.content[{index}].text", "must be a string", "schema")

    def tool_calls(self, calls, path: str) -> None:
        if not isinstance(calls, list) or not calls:
            self.add(path, "must be a non-empty list", "tool-calls")
            return
        for index, call in enumerate(calls):
            where = f"{path}[{index}]"
            if not isinstance(call, dict):
                self.add(where, "must be an object", "tool-calls")
                continue
            if not isinstance(call.get("id"), str):
                self.add(f"{where}.id", "a tool call needs a string id", "tool-calls")
            if call.get("type") != "function":
                self.add(f"{where}.type", f'must be "function", found {call.get("type")!r}', "tool-calls")
            function = call.get("function")
            if not isinstance(function, dict):
                self.add(f"{where}.function", "must be an object with name and arguments", "tool-calls")
                continue
            name = function.get("name")
            if not isinstance(name, str):
                self.add(f"{where}.function.name", "must be a string", "tool-calls")
            elif self.tool_names is None:
                self.add(f"{where}.function.name", f"calls {name!r} but input.tools declares no tools", "tool-name")
            elif name not in self.tool_names:
                self.add(f"{where}.function.name", f"calls {name!r}, which input.tools does not declare", "tool-name")
            arguments = function.get("arguments")
            if not isinstance(arguments, str):
                self.add(f"{where}.function.arguments", "must be a JSON-encoded string", "tool-calls")
            else:
                try:
                    orjson.loads(arguments)
                except orjson.JSONDecodeError:
                    self.add(f"{where}.function.arguments", "is not valid JSON", "tool-calls")

    def answers(self, message: dict, path: str, pending: set) -> None:
        """A tool message must answer a call of the assistant message before it."""
        call_id = message.get("tool_call_id")
        if not pending:
            self.add(path, "a tool message must follow an assistant message with tool_calls", "role-order")
        elif isinstance(call_id, str) and call_id not in pending:
            self.add(f"{path}.tool_call_id", f"{call_id!r} answers none of the pending calls", "tool-calls")
        if isinstance(call_id, str):  # a wrong-typed id is reported by message()
            pending.discard(call_id)

    @staticmethod
    def call_ids(message: dict) -> set:
        calls = message.get("tool_calls")
        if not isinstance(calls, list):
            return set()
        return {call["id"] for call in calls if isinstance(call, dict) and isinstance(call.get("id"), str)}

    def input_messages(self, messages: list) -> None:
        pending: set = set()
        previous = None  # last user/assistant role, for alternation
        seen_other = False
        last = None
        for index, message in enumerate(messages):
            path = f"input.messages[{index}]"
            role = _plain_role(message) or self.message(message, path, INPUT_ROLES)
            if role is None:
                last = None
                continue
            last_before, last = last, role
            if "weight" in message:
                if role != "assistant":
                    self.add(f"{path}.weight", "only assistant messages in input carry a weight", "weight")
                elif type(message["weight"]) not in (int, float) or message["weight"] not in (0, 1):
                    self.add(f"{path}.weight", f"Weight must be either 0 or 1, found {message['weight']!r}", "weight")
            if role in ("system", "developer"):
                if seen_other:
                    self.add(f"{path}.role", f"a {role} message must come before the conversation", "role-order")
                continue
            seen_other = True
            if role == "tool":
                self.answers(message, path, pending)
                continue
            if pending:
                self.add(path, f"tool calls {sorted(map(str, pending))} get no tool message before this one", "role-order")
                pending = set()
            continues_tool_turn = role == "assistant" and last_before == "tool"
            if (role == previous and not continues_tool_turn) or (previous is None and role != "user"):
                self.add(f"{path}.role", "`user` and `assistant` roles must alternate, starting with user", "role-order")
            previous = role
            if role == "assistant":
                pending = self.call_ids(message)
        if last is not None and last not in ("user", "tool"):
            self.add(f"input.messages[{len(messages) - 1}].role",
                     "input must end with a user (or tool) message: the outputs answer it", "role-order")
        if self.profile == "openai":
            turns = [m.get("role") for m in messages if isinstance(m, dict) and m.get("role") not in ("system", "developer")]
            if turns != ["user"]:
                self.add("input.messages", f"the OpenAI profile trains on one-turn examples (system/developer "
                                           f"messages and one user message); found {len(turns)} turns", "single-turn")

    def output(self, output, key: str) -> None:
        if not isinstance(output, list):
            self.add(key, "must be a list of messages", "schema")
            return
        if self.profile == "openai":
            if len(output) != 1:
                self.add(key, f"must contain exactly one message (the OpenAI profile), found {len(output)}", "output-count")
            roles: tuple = ("assistant",)
        else:
            roles = ("assistant", "tool")
        if not output:
            self.add(key, "must contain at least one assistant message", "output-count")
            return
        pending: set = set()
        role = None
        for index, message in enumerate(output):
            path = f"{key}[{index}]"
            role = _plain_role(message)
            if role not in roles:
                role = self.message(message, path, roles)
            if role is None:
                continue
            if "weight" in message:
                self.add(f"{path}.weight", "weights belong to input messages only", "weight")
            if role == "tool":
                self.answers(message, path, pending)
                continue
            if pending:
                self.add(path, f"tool calls {sorted(map(str, pending))} get no tool message before this one", "role-order")
            pending = self.call_ids(message)
            content = message.get("content")
            if not message.get("tool_calls") and (content is None or text_of(content).strip() == ""):
                self.add(f"{path}.content", "empty completion", "empty-completion")
        if role != "assistant":
            self.add(f"{key}[{len(output) - 1}]", "an output must end with an assistant message", "output-roles")


def _plain_role(message) -> Optional[str]:
    """The role of the common ``{"role": ..., "content": "text"}`` message
    that no message rule can fault (tool messages need more checks), else None."""
    if type(message) is dict and len(message) == 2 and type(message.get("content")) is str:
        role = message.get("role")
        if type(role) is str and role in PLAIN_ROLES:
            return role
    return None


def check_row(row: dict, profile: str) -> list[Problem]:
    """Every problem of one Azure/OpenAI row under ``profile``."""
    checker = _Checker(profile)
    checker.row(row)
    return checker.problems


def to_record(row: dict, profile: str) -> PreferenceRecord:
    problems = check_row(row, profile)
    if problems:
        raise RecordError(problems)
    source = row["input"]
    return PreferenceRecord(
        prompt=source["messages"],
        chosen=row["preferred_output"],
        rejected=row["non_preferred_output"],
        tools=source.get("tools"),
        parallel_tool_calls=source.get("parallel_tool_calls"),
        metadata=extra_fields(row, TOP_LEVEL),
    )


def from_record(record: PreferenceRecord, profile: str) -> dict:
    source: dict = {"messages": record.prompt}
    if record.tools is not None:
        source["tools"] = record.tools
    if record.parallel_tool_calls is not None:
        source["parallel_tool_calls"] = record.parallel_tool_calls
    row = with_extras({"input": source, "preferred_output": record.chosen, "non_preferred_output": record.rejected},
                      record.metadata, TOP_LEVEL)
    problems = check_row(row, profile)
    if problems:
        raise RecordError(problems)
    return row


def lint(row: dict) -> Iterable[Problem]:
    """Top-level fields beyond the three of the schema: kept, but flagged."""
    for key in row:
        if key not in TOP_LEVEL:
            yield Problem(key, "extra field: kept as metadata, but the hosted services may reject it", "extra-field", WARNING)


def check_file(summary) -> Iterable[Problem]:
    """Azure's file limits: at least 10 examples, under 512 MB."""
    if summary.rows < MIN_EXAMPLES:
        yield Problem("$", f"{summary.rows} examples; fine-tuning needs at least {MIN_EXAMPLES}", "min-examples")
    if summary.size_bytes is not None and summary.size_bytes >= MAX_FILE_BYTES:
        yield Problem("$", f"{summary.size_bytes / 2**20:.0f} MB; files must be under 512 MB", "file-size")


def detect(row: dict) -> bool:
    return isinstance(row.get("input"), dict) and ("preferred_output" in row or "non_preferred_output" in row)
