"""Hostile inputs that used to crash with a traceback (issue 12).

Each gives one clear line naming the path (``PATH: message`` for the file
as a whole, ``PATH:LINE: $: message`` where reading stopped part-way),
exits non-zero and writes nothing:

* input files ``dpo convert`` / ``dpo validate`` cannot read: a truncated
  ``.jsonl.gz``, a ``.gz`` that is not gzip, corrupt Parquet, a folder
  named like a file, an unreadable file, a file that disappears;
"""

from __future__ import annotations

import gzip
import os
import re

import pytest

from dpo_plugins.cli import main
from dpo_plugins.errors import DpoPluginsError
from dpo_plugins.formats.files import read_rows

ROW = b'{"prompt": "Why is the sky blue?", "chosen": "Rayleigh scattering.", "rejected": "It is not."}\n'


def _rows(count: int) -> bytes:
    return ROW * count


def truncated_gzip(tmp_path):
    data = gzip.compress(_rows(3000))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def corrupt_gzip(tmp_path):
    """Valid header and length, flipped bytes in the middle: a CRC or inflate error part-way."""
    data = bytearray(gzip.compress(_rows(3000), compresslevel=1))
    for index in range(len(data) // 2, len(data) // 2 + 64):
        data[index] ^= 0x55
    path = tmp_path / "flipped.jsonl.gz"
    path.write_bytes(bytes(data))
    return path


def not_gzip(tmp_path):
    path = tmp_path / "plain.jsonl.gz"
    path.write_bytes(_rows(2))
    return path


def _parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"question {i} " * 20, "chosen": "yes " * 30, "rejected": "no"} for i in range(4000)]
    path = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1000, compression="none")
    return path.read_bytes()


def cut_parquet(tmp_path):
    data = _parquet(tmp_path)
    path = tmp_path / "cut.parquet"
    path.write_bytes(data[: len(data) // 2])
    return path


def garbled_parquet(tmp_path):
    """The footer is intact, a data page is not: it fails while reading rows."""
    data = bytearray(_parquet(tmp_path))
    for index in range(len(data) // 2, len(data) // 2 + 2000):
        data[index] ^= 0xFF
    path = tmp_path / "garbled.parquet"
    path.write_bytes(bytes(data))
    return path


def folder_named_jsonl(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.mkdir()
    (path / "inside.txt").write_text("not rows")
    return path


def unreadable(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads a file whatever its permissions")
    path = tmp_path / "locked.jsonl"
    path.write_bytes(_rows(2))
    path.chmod(0)
    return path


# (builder, what the one error line says, whether it names a line: reading stopped part-way)
BAD_INPUTS = {
    "truncated .jsonl.gz": (truncated_gzip, "truncated", True),
    "corrupt .jsonl.gz": (corrupt_gzip, "corrupt gzip data", True),
    ".gz that is not gzip": (not_gzip, "not gzip data", False),
    "parquet cut in half": (cut_parquet, "not a readable Parquet file", False),
    "parquet with a garbled page": (garbled_parquet, "corrupt Parquet data", True),
    "folder named x.jsonl": (folder_named_jsonl, "is a folder", False),
    "unreadable file": (unreadable, "permission denied", False),
}


def _one_error_line(err: str, command: str, path, says: str, names_line: bool) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    where = rf"{re.escape(str(path))}:\d+: \$: " if names_line else rf"{re.escape(str(path))}: "
    assert re.match(rf"dpo {command}: error: {where}.*{says}", lines[0]), lines[0]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("detect", [True, False], ids=["detected", "--from"])
def test_convert_names_an_unreadable_input_and_writes_nothing(case, detect, tmp_path, capsys):
    build, says, names_line = BAD_INPUTS[case]
    source = build(tmp_path)
    before = sorted(os.listdir(tmp_path))
    out = tmp_path / "out.jsonl"
    args = ["convert", str(source), str(out), "--to", "azure"] + ([] if detect else ["--from", "hf"])
    assert main(args) == 1
    _one_error_line(capsys.readouterr().err, "convert", source, says, names_line)
    assert sorted(os.listdir(tmp_path)) == before  # no output, no temporary folder left behind


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_validate_names_an_unreadable_input(case, tmp_path, capsys):
    build, says, names_line = BAD_INPUTS[case]
    source = build(tmp_path)
    assert main(["validate", str(source)]) == 1
    _one_error_line(capsys.readouterr().err, "validate", source, says, names_line)


def test_a_truncated_gzip_fails_even_with_skip_invalid(tmp_path, capsys):
    """Skipping is for bad lines; the rows after the cut are not bad, they are missing."""
    source = truncated_gzip(tmp_path)
    out = tmp_path / "out.jsonl"
    assert main(["convert", str(source), str(out), "--skip-invalid"]) == 1
    assert "truncated" in capsys.readouterr().err
    assert not out.exists()


def test_a_truncated_gzip_names_the_line_where_the_data_ends(tmp_path):
    source = truncated_gzip(tmp_path)
    seen = 0
    with pytest.raises(DpoPluginsError) as raised:
        for line, row in read_rows(source):
            assert isinstance(row, dict)  # every complete line before the cut is read
            seen = line
    assert seen > 100
    assert str(raised.value).startswith(f"{source}:{seen + 1}: $: ")


def test_a_file_that_disappears_before_it_is_read(tmp_path):
    source = tmp_path / "gone.jsonl"
    source.write_bytes(_rows(3))
    rows = read_rows(source)  # checked and opened lazily, as the pipeline does
    source.unlink()
    with pytest.raises(DpoPluginsError, match=rf"^{re.escape(str(source))}: .*disappeared"):
        list(rows)


def test_a_missing_input_is_one_line(tmp_path, capsys):
    source = tmp_path / "nowhere.jsonl"
    assert main(["validate", str(source)]) == 1
    _one_error_line(capsys.readouterr().err, "validate", source, "no such file", False)
