"""Rows in and out of files: JSONL (optionally gzipped), JSON, Parquet and
``datasets`` folders, whatever the schema of the rows.

Reading yields ``(line, row)`` for every row, or ``(line, problem)`` for a
line that is not a JSON object (invalid JSON, invalid UTF-8), so callers list
every bad line instead of stopping at the first. JSONL is streamed line by
line in flat memory; a JSON array is parsed whole; Parquet and ``datasets``
folders are read in batches and numbered by row (1-based).

Arrow-backed containers (Parquet, ``datasets``) cannot tell a missing key
from a null one — a column of messages fills every absent key with null — so
their reader drops null values inside rows. Writers put ``tools`` there as a
JSON string (TRL decodes it), which keeps JSON schemas exact.

Every writer works in a temporary folder next to the target and renames the
result into place only when :meth:`RowWriter.commit` is called, so a failed
run leaves nothing behind.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path
from typing import Iterator, Union

import orjson

from ..atomic import discard, mark, publish, staging_folder
from ..errors import DpoPluginsError
from ..records import Problem, format_path
from . import exactjson
from .exactjson import strip_bom

BOM = b"\xef\xbb\xbf"
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")

Item = tuple[int, Union[dict, Problem]]


def container_of(path: Union[str, Path], for_output: bool = False) -> str:
    """Which container a path names: by suffix, or a folder for ``datasets``."""
    name = str(path).lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    path = Path(path)
    if path.is_dir() or (for_output and not path.suffix):
        return "datasets"
    raise DpoPluginsError(
        f"{path}: unknown file type; use .jsonl, .jsonl.gz, .json, .parquet, or a datasets folder"
    )


def read_rows(path: Union[str, Path]) -> Iterator[Item]:
    """Every row of ``path`` as ``(line, row)``, or ``(line, Problem)``.

    A file that cannot be read at all, or stops being readable part-way
    (truncated or corrupt gzip, corrupt Parquet, no permission, gone),
    raises a :class:`DpoPluginsError` (see :func:`_unreadable`): unlike a
    bad line, the rows after it are missing, not invalid, so no run may go
    on without them, ``--skip-invalid`` included.
    """
    path = Path(path)
    if not path.exists():
        raise DpoPluginsError(f"{path}: no such file or folder")
    container = container_of(path)
    if container != "datasets" and path.is_dir():
        raise DpoPluginsError(f"{path}: is a folder, not a {container} file (a datasets folder has no suffix)")
    reader = {"jsonl": _read_jsonl, "json": _read_json, "parquet": _read_parquet}.get(container, _read_datasets)
    return _guarded(path, reader(path))


# What reading a file can raise that is the file's fault, not ours: OS errors
# (BadGzipFile and ArrowIOError among them), EOFError (gzip ends early),
# zlib.error (corrupt deflate data), ValueError (ArrowInvalid).
_READ_FAILURES = (OSError, EOFError, zlib.error, ValueError)


def _guarded(path: Path, items: Iterator[Item]) -> Iterator[Item]:
    """``items``, with a read failure turned into one line naming the path (and the line, part-way)."""
    line = 0
    try:
        for line, item in items:
            yield line, item
    except _READ_FAILURES as error:
        raise DpoPluginsError(_unreadable(path, line, error)) from error
    except MemoryError:
        where = f"{path}:{line + 1}: $" if line else str(path)
        raise DpoPluginsError(f"{where}: out of memory while reading it (a line, or a gzip's decompressed data, "
                              "is too large)") from None


def _unreadable(path: Path, last_line: int, error: BaseException) -> str:
    """``PATH: message`` when nothing was read, ``PATH:LINE: $: message`` for the line reading stopped at."""
    if isinstance(error, FileNotFoundError):
        what = "disappeared while it was being read" if last_line else "disappeared before it could be read"
    elif isinstance(error, PermissionError):
        what = "permission denied: the file cannot be read (check its permissions)"
    elif isinstance(error, IsADirectoryError):
        what = "is a folder, not a file"
    elif isinstance(error, EOFError):
        what = "the gzip data ends before its end marker: the file is truncated or damaged (copy it again)"
    elif isinstance(error, (gzip.BadGzipFile, zlib.error)) and not last_line and "Not a gzipped file" in str(error):
        what = f"not gzip data ({error}); a plain JSONL file must not end in .gz"
    elif isinstance(error, (gzip.BadGzipFile, zlib.error)):
        what = f"corrupt gzip data ({error}); the file is damaged"
    elif path.suffix.lower() == ".parquet" and not last_line:
        what = f"not a readable Parquet file ({type(error).__name__}: {error})"
    elif path.suffix.lower() == ".parquet":
        what = f"corrupt Parquet data ({type(error).__name__}: {error}); the file is damaged"
    else:
        what = f"cannot be read: {type(error).__name__}: {getattr(error, 'strerror', None) or error}"
    return f"{path}:{last_line + 1}: $: {what}" if last_line else f"{path}: {what}"


def _open_binary(path: Path):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb", buffering=1 << 20)


def parse_line(raw: bytes) -> Union[dict, Problem]:
    """One JSONL line as a dict, or the Problem with it."""
    try:
        row = exactjson.loads(raw)
    except orjson.JSONDecodeError as error:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            return Problem("$", f"invalid UTF-8 at byte {bad.start}: {raw[bad.start:bad.start + 4]!r}", "utf8")
        # Each line is parsed alone: orjson's "line 1" would mislead, keep the column.
        return Problem("$", "invalid JSON: " + re.sub(r"line 1 column (\d+) \(char \d+\)", r"column \1", str(error)), "json")
    if not isinstance(row, dict):
        return Problem("$", f"each line must be a JSON object, found {type(row).__name__}", "json")
    return _repeated_key(raw, row) or row


def _repeated_key(raw: bytes, row: dict) -> Union[Problem, None]:
    """A key written twice in one object of the row (JSON parsers keep the last one silently), or None."""
    found = exactjson.duplicate_keys(raw, row)
    return _repeated_key_problem(found) if found else None


def _repeated_key_problem(found: list) -> Problem:
    path, key = found[0]
    others = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return Problem(format_path(path + (key,)),
                   f"duplicate key {key!r}: given twice in one object{others}; JSON readers keep only the last "
                   "value, so say which one is meant", "json")


# A decompressed line is read into memory whole: past this a gzip bomb (a few KB that expand to many GB
# with no newline) is named with its path and line, before memory runs out.
MAX_GZIP_LINE = 256 << 20


def _lines(handle, path: Path):
    if not str(path).endswith(".gz"):
        yield from handle
        return
    for number, raw in enumerate(iter(lambda: handle.readline(MAX_GZIP_LINE + 1), b""), start=1):
        if len(raw) > MAX_GZIP_LINE:
            raise DpoPluginsError(f"{path}:{number}: $: this line expands to more than {MAX_GZIP_LINE >> 20} MiB "
                                  "once decompressed: a gzip bomb, or not JSON lines; nothing was read past it")
        yield raw


_UTF16_32 = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
             b"\xfe\xff": "UTF-16"}


def check_encoding(path: Path, head: bytes) -> None:
    """Refuse a file in UTF-16 / UTF-32 (by its byte-order mark, or NUL bytes between ASCII) by name."""
    found = next((name for mark, name in _UTF16_32.items() if head.startswith(mark)), None)
    sample = head[:64]
    if found is None and len(sample) >= 4 and sample.count(0) >= len(sample) // 4:
        found = "UTF-16 or UTF-32"
    if found:
        raise DpoPluginsError(f"{path}: the file is encoded in {found}, not UTF-8: convert it first "
                              f"(for example `iconv -f {found.split()[0]} -t UTF-8 IN > OUT`)")


def _read_jsonl(path: Path) -> Iterator[Item]:
    with _open_binary(path) as handle:
        for line, raw in enumerate(_lines(handle, path), start=1):
            if line == 1:
                check_encoding(path, raw)
                if raw.startswith(BOM):
                    raw = raw[len(BOM):]
            if raw.strip():
                yield line, parse_line(raw)


def _read_json(path: Path) -> Iterator[Item]:
    """A ``.json`` file: a JSON array of rows, or JSON lines (as ``datasets`` accepts)."""
    with _open_binary(path) as handle:
        head = handle.read(4096)
    check_encoding(path, head)
    head = strip_bom(head).lstrip()
    if not head.startswith(b"["):
        yield from _read_jsonl(path)
        return
    with _open_binary(path) as handle:
        raw = strip_bom(handle.read())
    try:
        rows = exactjson.loads(raw)
    except orjson.JSONDecodeError:
        yield 1, parse_line(raw)  # the same message a JSONL line would get
        return
    repeated: dict = {}
    for path, key in exactjson.duplicate_keys(raw, rows):
        if path:  # a row's own keys (the array itself has none)
            repeated.setdefault(path[0], []).append((path[1:], key))
    for index, row in enumerate(rows, start=1):
        if isinstance(row, dict) and index - 1 in repeated:
            yield index, _repeated_key_problem(repeated[index - 1])
        elif isinstance(row, dict):
            yield index, row
        else:
            yield index, Problem("$", f"each element must be a JSON object, found {type(row).__name__}", "json")


def _without_nulls(value):
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _read_parquet(path: Path) -> Iterator[Item]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            index += 1
            yield index, _without_nulls(row)


def _read_datasets(path: Path) -> Iterator[Item]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as error:
        raise DpoPluginsError(f"{path}: not a datasets folder (save_to_disk): {error}") from error
    if isinstance(dataset, datasets.DatasetDict):
        splits = ", ".join(dataset)
        raise DpoPluginsError(f"{path}: holds the splits {splits}; pass one split's folder, e.g. {path}/{next(iter(dataset))}")
    index = 0
    for batch in dataset.with_format("arrow").iter(batch_size=1024):
        for row in batch.to_pylist():
            index += 1
            yield index, _without_nulls(row)


class RowWriter:
    """Writes rows to a temporary path; ``commit()`` renames it into place.

    JSONL and JSON are written as rows arrive. For Parquet and ``datasets``
    folders rows are staged as JSON lines in a temporary folder, then Arrow
    is built from them in two streaming passes (one to unify the schema of
    every batch — a message with ``tool_calls`` in row 90,000 widens the
    struct of all — one to write), so memory stays flat there too.
    """

    def __init__(self, path: Union[str, Path], bom: bool = False):
        self.path = Path(path)
        self.container = container_of(self.path, for_output=True)
        self.count = 0
        self._work = staging_folder(self.path)
        arrow = self.container in ("parquet", "datasets")
        raw = open(self._work / ("staged.jsonl" if arrow else "out"), "wb", buffering=1 << 20)
        self._raw = raw
        self._handle = gzip.GzipFile(fileobj=raw, mode="wb") if str(self.path).endswith(".gz") else raw
        if bom and not arrow:
            self._handle.write(BOM)
        if self.container == "json":
            self._handle.write(b"[")

    def write(self, row: dict) -> None:
        if self.container == "json":
            self._handle.write((b",\n" if self.count else b"\n") + exactjson.dumps(row))
        else:
            if self.container != "jsonl" and isinstance(row.get("tools"), list):
                row = {**row, "tools": orjson.dumps(row["tools"]).decode()}
            self._handle.write(exactjson.dumps(row) + b"\n")
        self.count += 1

    def _close(self) -> None:
        if not self._raw.closed:
            self._handle.close()
            self._raw.close()

    def commit(self) -> None:
        """Finish the temporary output and move it to the target path."""
        if self.container == "json":
            self._handle.write(b"\n]\n")
        self._close()
        if self.container == "parquet":
            built = self._write_parquet(self._work / "out.parquet")
        elif self.container == "datasets":
            built = self._write_datasets()
        else:
            built = self._work / "out"
        publish(built, self.path)
        discard(self._work)

    def _staged_batches(self, size: int = 2048):
        batch = []
        with open(self._work / "staged.jsonl", "rb") as handle:
            for line in handle:
                batch.append(exactjson.loads(line))
                if len(batch) == size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def _write_parquet(self, target: Path) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = None
            for batch in self._staged_batches():
                found = pa.Table.from_pylist(batch).schema
                schema = found if schema is None else pa.unify_schemas([schema, found], promote_options="permissive")
            with pq.ParquetWriter(target, schema or pa.schema([])) as writer:
                for batch in self._staged_batches():
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        except (pa.ArrowException, ValueError, TypeError) as error:
            raise DpoPluginsError(
                f"{self.path}: these rows do not fit one Arrow table ({type(error).__name__}: {error}); "
                "write JSONL instead"
            ) from error
        return target

    def _write_datasets(self) -> Path:
        import datasets

        parquet = self._write_parquet(self._work / "staged.parquet")
        shown = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # the CLI reports counts itself
        try:
            dataset = datasets.Dataset.from_parquet(str(parquet), cache_dir=str(self._work / "cache"))
            dataset.save_to_disk(str(self._work / "out"))
        finally:
            if shown:
                datasets.enable_progress_bars()
        mark(self._work / "out", "dpo convert")  # a later conversion may replace this folder
        return self._work / "out"

    def discard(self) -> None:
        """Remove the temporary output; the target path is left untouched."""
        try:
            self._close()  # flushing may fail again (the disk that was full still is)
        except OSError:
            pass
        finally:
            discard(self._work)
