"""Lossless or loud: what a written row no longer holds of its record.

A target format writes a record as one row of its schema; when the schema
is narrower than the record (LLaMA-Factory has no message ``name``, HH no
tools, sharegpt no tool-call ids) something would be lost. Instead of
trusting every ``from_record`` to list what it drops, the pipeline reads the
written row back with the same format's ``to_record`` and compares the two
records: whatever differs is reported for its line, at its path in the
record. That catches every loss of every format, third-party ones included,
for one extra ``to_record`` per row.

:func:`nesting_problem` guards the other end: a row nested deeper than the
JSON writers go is refused when it is read, so no hook ever recurses into it
and ``validate`` and ``convert`` agree about it.
"""

from __future__ import annotations

import re
from typing import Optional

import orjson

from ..records import ERROR, PreferenceRecord, Problem, RecordError

LOSSY = "lossy"
FIELDS = ("prompt", "chosen", "rejected", "tools", "parallel_tool_calls", "metadata")
MAX_SHOWN = 40  # characters of a changed value shown in a message
WRITER_DEPTH = 254  # orjson's nesting limit when writing (it reads 1024)


def lost_fields(target, record: PreferenceRecord, row: dict, severity: str = ERROR) -> list[Problem]:
    """Every path where ``row``, read back as ``target``, differs from ``record``."""
    try:
        back = target.to_record(row)
    except RecordError as error:
        return [Problem(p.path, f"the row written as {target.name} does not read back: {p.message}", p.rule)
                for p in error.problems]
    problems: list[Problem] = []
    for name in FIELDS:
        before, after = getattr(record, name), getattr(back, name)
        if before != after or type(before) is not type(after):
            _diff(before, after, name, target.name, severity, problems)
    return problems


def field_of(problem: Problem) -> str:
    """The field a loss is counted under: its path without list indices."""
    return re.sub(r"\[\d+\]", "[]", problem.path)


def _diff(before, after, path: str, target: str, severity: str, out: list) -> None:
    if type(before) is dict and type(after) is dict:
        for key, value in before.items():
            where = f"{path}.{key}"
            if key not in after:
                out.append(Problem(where, f"{target} cannot hold this field: dropped", LOSSY, severity))
            elif value != after[key] or type(value) is not type(after[key]):
                _diff(value, after[key], where, target, severity, out)
        for key in after.keys() - before.keys():
            out.append(Problem(f"{path}.{key}", f"appears when written as {target} (absent in the source)", LOSSY,
                               severity))
    elif type(before) is list and type(after) is list and len(before) == len(after):
        for index, (one, other) in enumerate(zip(before, after)):
            if one != other or type(one) is not type(other):
                _diff(one, other, f"{path}[{index}]", target, severity, out)
    else:
        out.append(Problem(path, f"{target} cannot hold it exactly: {_short(before)} becomes {_short(after)}", LOSSY,
                           severity))


def _short(value) -> str:
    if type(value) is list:
        return f"{len(value)} item(s)"
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def nesting_problem(row: dict) -> Optional[Problem]:
    """A problem when ``row`` is nested deeper than the writers can write."""
    try:
        orjson.dumps(row)
    except orjson.JSONEncodeError as error:
        if "Recursion" in str(error):
            return Problem("$", f"nested more than {WRITER_DEPTH} levels deep; the JSON writers stop there",
                           "nesting")
    return None
