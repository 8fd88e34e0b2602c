"""Issue #22, rules 7, 8 and 9: names from data never change a report's structure, secret-looking values are
redacted whatever their parameter is called, rows without a subset are counted, and a file in the wrong
encoding or a gzip that expands too far is named for what it is.
"""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_plugins.cli import main
from dpo_plugins.evals.report import markdown_code, markdown_text, render_markdown
from dpo_plugins.evals.judging import looks_like_secret
from dpo_plugins.formats import files

ROW = {"prompt": "a question?", "chosen": "a good answer", "rejected": "a bad one"}


def _table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ")]


@settings(max_examples=200, deadline=None)
@given(names=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4, unique=True))
def test_subset_names_never_change_the_report_structure(names):
    metrics = {"model": "m", "ref": "r", "data": "d", "n_pairs": len(names),
               "subsets": {name: {"n_pairs": 1, "reward_accuracy": 1.0} for name in names}}
    report = render_markdown(metrics, [])
    subset_lines = [line for line in _table_rows(report) if line.endswith("| 100.0% |")]
    assert len(subset_lines) == len(names)
    for line in subset_lines:  # three cells each: no unescaped | inside a name
        assert len([part for part in line.split("|") if part]) - line.count("\\|") == 3, line


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=20))
def test_data_paths_stay_one_code_span_on_one_line(value):
    span = markdown_code(value)
    assert "\n" not in span and "\r" not in span
    fence = len(span) - len(span.lstrip("`"))
    assert "`" * fence not in span[fence:-fence]


def test_a_subset_with_a_bar_and_a_newline_keeps_its_cell():
    report = render_markdown({"subsets": {"evil | x\n# Heading": {"n_pairs": 2, "reward_accuracy": 0.5}}}, [])
    assert "| evil \\| x\\\\n\\# Heading | 2 | 50.0% |" in report
    assert "\n# Heading" not in report
    assert markdown_text("plain") == "plain"


@pytest.mark.parametrize("value", ["Bearer abc.def-ghi123456", "sk-proj-abcdefghij0123456789",
                                   "ghp_abcdefghij0123456789ABCD", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIx.sig",
                                   "a8f5f167f44f4964e6c998dee827110c4a8f5f167f44"])
def test_secret_looking_values_are_redacted_whatever_the_key(value):
    assert looks_like_secret(value)


@pytest.mark.parametrize("value", ["smollm2", "http://127.0.0.1:8080/v1", "/models/run-0001/checkpoint-500",
                                   "You are a careful judge; answer A or B.", "meta-llama-Llama-3-8B-Instruct-v2",
                                   "gpt-4o-mini", 0.7, None])
def test_ordinary_values_are_shown(value):
    assert not looks_like_secret(value)


def test_a_judge_parameter_with_a_token_value_never_reaches_the_report(registered):
    from dpo_plugins import hookimpl
    from dpo_plugins.evals.judging import judge_both_orders
    from dpo_plugins.specs import Judge

    def first_wins(prompts, outputs_a, outputs_b, **params):
        return ["a"] * len(prompts)

    class Plugin:
        @hookimpl
        def register_judges(self):
            yield Judge(name="first-wins-i22", fn=first_wins, params={"authorisation": None, "note": None})

    registered(Plugin(), "first-wins-i22")
    metrics, _ = judge_both_orders("first-wins-i22", ["q"], ["a"], ["b"],
                                   {"authorisation": "Bearer abcdefgh12345678", "note": "shown"})
    assert metrics["judge_info"]["params"] == {"authorisation": "<redacted>", "note": "shown"}
    report = render_markdown(metrics, [])
    assert "Judge settings" in report and "abcdefgh12345678" not in report


def test_rows_without_a_subset_are_counted_not_dropped(tmp_path, caplog):
    import logging

    from dpo_plugins.formats.rewardbench import NO_SUBSET, subsets_of

    data = tmp_path / "rb.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in [
        {**ROW, "subset": "chat"}, ROW, {**ROW, "subset": "safety"}]))
    caplog.set_level(logging.WARNING, logger="dpo_plugins.eval")
    assert subsets_of(data) == ["chat", NO_SUBSET, "safety"]
    assert "1 of 3 rows have no subset" in caplog.text
    data.write_text(json.dumps(ROW) + "\n")
    assert subsets_of(data) is None


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_utf16_and_utf32_are_named(tmp_path, capsys, encoding, suffix):
    data = tmp_path / f"pairs{suffix}"
    data.write_bytes((json.dumps(ROW) + "\n").encode(encoding))
    assert main(["validate", str(data)]) == 1
    err = capsys.readouterr().err
    assert f"{data}: the file is encoded in UTF-" in err and "not UTF-8" in err
    assert "invalid UTF-8" not in err


def test_a_gzip_that_expands_too_far_is_named_with_its_path(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(files, "MAX_GZIP_LINE", 1 << 20)
    bomb = tmp_path / "bomb.jsonl.gz"
    with gzip.open(bomb, "wb") as handle:
        handle.write(json.dumps(ROW).encode() + b"\n")
        handle.write(b'{"prompt": "' + b"a" * (3 << 20))
    assert bomb.stat().st_size < 20_000
    assert main(["convert", str(bomb), str(tmp_path / "out.jsonl"), "--skip-invalid"]) == 1
    err = capsys.readouterr().err
    assert f"{bomb}:2: $: this line expands to more than 1 MiB once decompressed" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_winrate_never_pools_two_baselines(tmp_path, capsys):
    rows = [{"instruction": f"q{i}", "output_1": "b", "output_2": "m", "generator_1": f"base-{i % 2}",
             "generator_2": "model", "preference": 2} for i in range(4)]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(rows))
    assert main(["winrate", str(path)]) == 1
    assert "judgments of several baselines (base-0, base-1)" in capsys.readouterr().err
