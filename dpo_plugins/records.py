"""The canonical preference record every format converts through.

Formats convert one row of their schema to a :class:`PreferenceRecord` and
back, so N formats need N converters, not N². The record holds chat messages
as plain OpenAI-style dicts (``role``, ``content``, and ``tool_calls``,
``tool_call_id``, ``name``, ``weight`` ... where present) and keeps every key
it was given: a round trip through the record loses nothing that both ends
can represent.

Problems are reported as :class:`Problem` values (a JSON path inside the row,
a message, the rule that found it); :class:`RecordError` carries all of a
row's problems at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .errors import RecordError  # noqa: F401  (formats raise it with the Problems below)

ERROR = "error"
WARNING = "warning"


@dataclass(slots=True)
class PreferenceRecord:
    """One preference pair.

    ``prompt``: the conversation so far (system/developer, user, assistant
    and tool messages). ``chosen`` / ``rejected``: the preferred and the
    dispreferred continuation, each a list of messages (usually one assistant
    message; tool-calling outputs hold assistant and tool messages).
    ``tools``: OpenAI function-tool schemas offered to the model.
    ``parallel_tool_calls``: the Azure/OpenAI request option, when given.
    ``metadata``: every other field of the source row (ids, scores, ...),
    written back by formats that can carry extra fields.

    Two layout flags let a format reproduce its own rows exactly: ``text``
    (the source held plain strings — TRL's *standard* format — so the prompt
    is one user message and each output one assistant message) and
    ``implicit_prompt`` (the source had no separate prompt; it was the shared
    prefix of the chosen and rejected transcripts). Formats that have no such
    notion ignore them.
    """

    prompt: list
    chosen: list
    rejected: list
    tools: Optional[list] = None
    parallel_tool_calls: Optional[bool] = None
    metadata: dict = field(default_factory=dict)
    text: bool = False
    implicit_prompt: bool = False


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a row: where (a JSON path), what, which rule."""

    path: str
    message: str
    rule: str
    severity: str = ERROR


def format_path(path) -> str:
    """``("models", 1, "model")`` -> ``models[1].model`` (``$`` for the root): how a Problem names a place."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "$"
