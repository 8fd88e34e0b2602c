"""Conversion and validation over whole files, one row at a time.

Both stream: a row is read, converted through the canonical record and
written (or checked) before the next is read, so memory stays flat whatever
the file size (Arrow outputs are staged on disk first: see ``files.py``).
Problems are collected with their line numbers so that every
bad line is reported, not only the first; a format hook that crashes on a
row is that row's problem (naming the plugin), not the end of the run.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from ..atomic import check_output
from ..errors import DpoPluginsError
from ..plugins import get_format, get_formats, registrations
from ..records import ERROR, WARNING, PreferenceRecord, Problem, RecordError
from ..specs import Format
from ..formats.files import Item, RowWriter, container_of, read_rows
from ..formats.lint import Duplicates, check_record
from ..formats.lossless import field_of, lost_fields, nesting_problem


@dataclass(frozen=True)
class Finding:
    """A problem at a line of a file (line 0: the file as a whole)."""

    path: str
    line: int
    problem: Problem

    def __str__(self) -> str:
        """One line, whatever the row held: control characters in keys or values are escaped."""
        p = self.problem
        tag = p.rule if p.severity == ERROR else f"{p.rule}, {p.severity}"
        if self.line == 0:
            return _escaped(f"{self.path}: {p.message} [{tag}]")
        return _escaped(f"{self.path}:{self.line}: {p.path}: {p.message} [{tag}]")

    def as_dict(self) -> dict:
        p = self.problem
        return {"path": self.path, "line": self.line, "json_path": p.path, "message": p.message,
                "rule": p.rule, "severity": p.severity}


def _escaped(text: str) -> str:
    """``text`` with control characters as escapes, so a key holding a newline cannot forge a line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


@dataclass
class Report:
    """What a run found: problems, counts, and the format it read."""

    path: str
    source: str = ""
    detected: bool = False
    rows: int = 0
    valid: int = 0
    written: int = 0
    findings: list[Finding] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    error_count: int = 0

    def add(self, line: int, problem: Problem) -> None:
        self.findings.append(Finding(self.path, line, problem))
        self.error_count += problem.severity == ERROR

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.problem.severity == ERROR]

    def by_rule(self) -> dict[str, int]:
        return dict(sorted(Counter(f.problem.rule for f in self.findings).items()))

    def error_message(self) -> str:
        shown = "\n".join(map(str, self.errors))
        how = ", detected" if self.detected else ""
        return f"{len(self.errors)} problem(s) in {self.path} (read as {self.source}{how}):\n{shown}"


@dataclass(frozen=True)
class FileSummary:
    path: str
    rows: int
    size_bytes: Optional[int]


def _formats() -> dict[str, Format]:
    """The registry, fetched once per run (each lookup re-collects every plugin)."""
    return get_formats()


def _named(formats: dict[str, Format], name: str) -> Format:
    return formats[name] if name in formats else get_format(name)  # the latter raises, listing the names


def detect_format(path: str, first_row: dict, formats: dict[str, Format]) -> Format:
    """The single registered format whose ``detect`` accepts ``first_row``."""
    matches = [spec for spec in formats.values() if spec.detect is not None and _detects(spec, first_row)]
    if len(matches) == 1:
        return matches[0]
    keys = ", ".join(sorted(first_row)[:8])
    if not matches:
        raise DpoPluginsError(f"{path}: cannot tell the format of the first row (keys: {keys}); pass --from")
    names = ", ".join(spec.name for spec in matches)
    raise DpoPluginsError(f"{path}: the first row fits several formats ({names}); pass --from")


def _detects(spec: Format, row: dict) -> bool:
    try:
        return bool(spec.detect(row))
    except Exception:  # a third-party detector that chokes on a foreign row just says no
        return False


def open_source(path, from_format: Optional[str], report: Report, formats: dict[str, Format]) -> Iterator[Item]:
    """The rows of ``path``, with ``report.source`` set to the format (named or detected)."""
    if from_format:
        report.source = _named(formats, from_format).name
    items = read_rows(path)
    if from_format:
        return items
    peeked = []
    for item in items:
        peeked.append(item)
        if isinstance(item[1], dict):
            report.source, report.detected = detect_format(str(path), item[1], formats).name, True
            break
    if not report.source:
        if not peeked:
            raise DpoPluginsError(f"{path}: no rows")
        raise DpoPluginsError(f"{path}: no row is a JSON object, so the format cannot be detected; pass --from")
    return itertools.chain(peeked, items)


def records(path, from_format: Optional[str], report: Report, formats: dict[str, Format]
            ) -> Iterator[tuple[int, dict, PreferenceRecord]]:
    """``(line, row, record)`` for every valid row; every problem lands in ``report``.

    The file is opened (and its format detected) before this returns.
    """
    items = open_source(path, from_format, report, formats)
    return _records(items, formats[report.source], report)


def _records(items, source: Format, report: Report):
    for line, row in items:
        report.rows += 1
        if isinstance(row, Problem):
            report.add(line, row)
            continue
        deep = nesting_problem(row)
        if deep is not None:
            report.add(line, deep)
            continue
        try:
            record = source.to_record(row)
        except RecordError as error:
            for problem in error.problems:
                report.add(line, problem)
            continue
        except Exception as error:
            report.add(line, _crash(source, "to_record", error))
            continue
        report.valid += 1
        yield line, row, record


def _crash(spec: Format, method: str, error: Exception) -> Problem:
    """A hook that raised something other than RecordError on a row: a bug in it, named, for that row."""
    registration = registrations("format").get(spec.name)
    plugin = f"plugin {registration.provider}" if registration else "the plugin that registers it"
    return Problem("$", f"format {spec.name!r} crashed in {method}(): {type(error).__name__}: {error} "
                        f"(a bug in {plugin})", "plugin-crash")


def _written(target: Format, record: PreferenceRecord, report: Report, line: int, lossy: bool) -> Optional[dict]:
    """``record`` as a row of ``target``, or None; every problem and loss lands in ``report``.

    A loss (what the row no longer holds, see ``lossless.py``) is an error,
    or with ``lossy`` a warning counted per field in ``report.stats["lost"]``.
    """
    try:
        row = target.from_record(record)
        losses = lost_fields(target, record, row, WARNING if lossy else ERROR)
    except RecordError as error:
        for problem in error.problems:
            report.add(line, Problem(problem.path, f"cannot be written as {target.name}: {problem.message}",
                                     problem.rule))
        return None
    except Exception as error:
        report.add(line, _crash(target, "from_record", error))
        return None
    for problem in losses:
        report.add(line, problem)
        if problem.severity == WARNING:
            lost = report.stats.setdefault("lost", Counter())
            lost[field_of(problem)] += 1
    return None if any(p.severity == ERROR for p in losses) else row


def convert(src, dst, from_format=None, to_format=None, skip_invalid=False, bom=False, lossy=False) -> Report:
    """Convert ``src`` to ``dst``; strict unless ``skip_invalid``, lossless unless ``lossy``.

    Strict: any invalid line fails the run (``DpoPluginsError`` listing them
    all) and nothing is written. With ``skip_invalid`` the valid rows are
    written and the report lists each skipped line. A field the target
    cannot hold is an error for its line; with ``lossy`` a warning, and the
    row is written without it.
    """
    check_output(dst, folder=container_of(dst, for_output=True) == "datasets", inputs=[src])
    report = Report(str(src))
    formats = _formats()
    target = _named(formats, to_format) if to_format else None
    writer = None
    try:
        stream = records(src, from_format, report, formats)
        target = target or formats[report.source]
        writer = RowWriter(dst, bom=bom)
        for line, _, record in stream:
            row = _written(target, record, report, line, lossy)
            if row is None:
                continue
            if skip_invalid or not report.error_count:
                writer.write(row)
        report.written = writer.count
        if report.error_count and not skip_invalid:
            raise DpoPluginsError(report.error_message() + f"\nnothing written to {dst}")
        if not writer.count:  # success means something was written; an existing output stays as it was
            found = report.error_message() + "\n" if report.error_count else ""
            raise DpoPluginsError(f"{found}{src}: no row to write ({report.rows} read, none valid); "
                                  f"nothing written to {dst}")
        writer.commit()
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    return report


def validate(path, from_format=None, profile=None, model=None, max_length=None) -> Report:
    """Check every row: the format's rules, the profile's, the cross-format lint rules."""
    report = Report(str(path))
    formats = _formats()
    profile_format = _named(formats, profile) if profile else None
    duplicates = Duplicates()
    items = open_source(path, from_format, report, formats)
    source = formats[report.source]
    if profile_format is not None and source.schema is not None and source.schema == profile_format.schema:
        source = profile_format  # same schema: read it under the profile's rules directly
        report.source = profile
    stream = _records(items, source, report)
    token_checks = None
    if model:
        from dpo_plugins.formats.token_checks import TokenChecks

        token_checks = TokenChecks(model, max_length, (profile_format or source).max_example_tokens)
    for line, row, record in stream:
        try:
            for problem in source.lint(row) if source.lint else ():
                report.add(line, problem)
        except Exception as error:
            report.add(line, _crash(source, "lint", error))
        if profile_format is not None and profile_format.name != source.name:
            try:
                profile_format.from_record(record)
            except RecordError as error:
                for problem in error.problems:
                    report.add(line, Problem(problem.path, f"as {profile}: {problem.message}", problem.rule))
            except Exception as error:
                report.add(line, _crash(profile_format, "from_record", error))
        for problem in check_record(record):
            report.add(line, problem)
        for problem in duplicates.check(record, line):
            report.add(line, problem)
        if token_checks is not None:
            for problem in token_checks.check(record):
                report.add(line, problem)
    checker = profile_format or source
    if checker.check_file:
        size = Path(path).stat().st_size if Path(path).is_file() else None
        for problem in checker.check_file(FileSummary(str(path), report.valid, size)):
            report.add(0, problem)
    if token_checks is not None:
        report.stats = token_checks.summary()
    return report


def read_trl_rows(path, from_format: Optional[str] = None, *, identical_pairs: Optional[str] = None) -> list[dict]:
    """Read preference data of any registered format as TRL DPO rows.

    The one entry point ``dpo train``, ``dpo eval`` and ``dpo anneal`` read
    data with. Each row has ``prompt``, ``chosen`` and ``rejected`` —
    message lists (TRL's conversational format) or strings (standard format,
    when the source held strings) — with the prompt always explicit, plus
    ``tools`` as a JSON string when the row offers tools (TRL's
    ``DPOTrainer`` decodes a string ``tools`` column; a string keeps
    differently shaped schemas out of Arrow's column typing). Other fields
    are dropped. The format is auto-detected when ``from_format`` is None.
    Raises :class:`DpoPluginsError` listing every bad line; with
    ``identical_pairs`` (the option that allows them, for the message) a pair
    whose chosen and rejected are identical is a bad line too, as in
    ``dpo validate``. A file with no row is an error.
    """
    import orjson

    formats = _formats()
    hf = formats["hf"]
    report = Report(str(path))
    rows = []
    for line, _, record in records(path, from_format, report, formats):
        if identical_pairs and record.chosen == record.rejected:
            report.add(line, Problem("chosen", f"chosen and rejected are identical: the pair teaches nothing "
                                               f"({identical_pairs} to use it anyway)", "identical-pair"))
            continue
        record.implicit_prompt = False
        record.metadata = {}
        record.parallel_tool_calls = None
        try:
            row = hf.from_record(record)
        except RecordError as error:
            for problem in error.problems:
                report.add(line, problem)
            continue
        if row.get("tools") is not None:
            row["tools"] = orjson.dumps(row["tools"]).decode()
        rows.append(row)
    if report.errors:
        raise DpoPluginsError(report.error_message())
    if not rows:
        raise DpoPluginsError(f"{path}: no rows: a preference file must hold at least one pair")
    return rows
