"""Cross-format checks on canonical records: the silent killers of DPO data.

These run in ``dpo validate`` whatever the format: a pair whose chosen and
rejected are identical (no learning signal), an empty completion, prompts
that differ between the chosen and rejected transcripts (the outputs then
carry user turns: the pair compares two conversations, not two answers),
and duplicate records (a warning: upsampling is sometimes meant).
"""

from __future__ import annotations

import json
from typing import Iterator

import orjson

from ..records import WARNING, PreferenceRecord, Problem


def text_of(content) -> str:
    """The text of a message content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _is_empty(output: list) -> bool:
    """No message, or a last message with neither text nor a tool call."""
    if not output:
        return True
    last = output[-1]
    return isinstance(last, dict) and not last.get("tool_calls") and not text_of(last.get("content")).strip()


def check_record(record: PreferenceRecord) -> Iterator[Problem]:
    if record.chosen == record.rejected:
        yield Problem("chosen", "chosen and rejected are identical: the pair teaches nothing", "identical-pair")
    for key, output in (("chosen", record.chosen), ("rejected", record.rejected)):
        if _is_empty(output):
            yield Problem(key, "empty completion", "empty-completion")
        roles = {m.get("role") for m in output if isinstance(m, dict) and isinstance(m.get("role"), str)}
        if roles & {"user", "system", "developer"}:
            yield Problem(key, "the output holds user/system turns: the chosen and rejected transcripts "
                               "differ before their last answer", "prompt-mismatch")


class Duplicates:
    """Remembers a 64-bit hash and first line per record (~120 bytes a row, not the rows)."""

    def __init__(self):
        self.first_line: dict[int, int] = {}

    def check(self, record: PreferenceRecord, line: int) -> Iterator[Problem]:
        pair = [record.prompt, record.chosen, record.rejected, record.tools]
        try:
            key = hash(orjson.dumps(pair, option=orjson.OPT_SORT_KEYS))
        except orjson.JSONEncodeError:  # an integer beyond 64 bits (a JSON schema's bound): exact, slower
            key = hash(json.dumps(pair, sort_keys=True))
        first = self.first_line.setdefault(key, line)
        if first != line:
            yield Problem("$", f"duplicate of line {first}", "duplicate", WARNING)
