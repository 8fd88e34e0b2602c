"""Preference-data formats: conversion, round trips, the Azure/OpenAI rules,
lint rules, and the real HH-RLHF slice shipped in the package."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import dpo_plugins
from dpo_plugins import Format, hookimpl
from dpo_plugins.cli import main
from dpo_plugins.errors import DpoPluginsError
from dpo_plugins.formats import azure
from dpo_plugins.workflows.convert import FileSummary
from dpo_plugins.workflows.convert import read_trl_rows
from dpo_plugins.records import PreferenceRecord, Problem, RecordError

DATA = Path(__file__).parent / "data"
HH = Path(dpo_plugins.__file__).parent / "data" / "hh-rlhf" / "harmless-base-test-first400.jsonl.gz"

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def call(call_id, city):
    return {"role": "assistant", "content": None, "tool_calls": [{
        "id": call_id, "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}]}


# Tools, tool calls, tool messages, system message, multi-turn input, weights,
# multi-message outputs and top-level metadata: everything Azure can carry.
RICH_AZURE = [
    {
        "input": {
            "messages": [
                {"role": "system", "content": "You are a weather bot."},
                {"role": "user", "content": "Weather in Paris?"},
                call("call_1", "Paris"),
                {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
                {"role": "assistant", "content": "18C and sunny.", "weight": 0},
                {"role": "user", "content": "And in Oslo?"},
            ],
            "tools": TOOLS,
            "parallel_tool_calls": False,
        },
        "preferred_output": [
            call("call_2", "Oslo"),
            {"role": "tool", "tool_call_id": "call_2", "content": "3C, snow"},
            {"role": "assistant", "content": "3C with snow."},
        ],
        "non_preferred_output": [{"role": "assistant", "content": "Probably cold."}],
        "id": "rich-1",
        "source": {"team": "weather", "score": 0.5},
    },
    {
        "input": {"messages": [{"role": "developer", "content": "Answer in French."},
                               {"role": "user", "content": [{"type": "text", "text": "Hello"}]}]},
        "preferred_output": [{"role": "assistant", "content": "Bonjour !"}],
        "non_preferred_output": [{"role": "assistant", "content": "Hello!", "name": "bot"}],
    },
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def dpo(*args):
    return main([str(arg) for arg in args])


@pytest.mark.parametrize("container", ["hf.jsonl", "hf.json", "hf.jsonl.gz"])
def test_azure_to_hf_to_azure_is_lossless(tmp_path, container):
    source = write_jsonl(tmp_path / "in.jsonl", RICH_AZURE)
    assert dpo("convert", source, tmp_path / container, "--to", "hf") == 0
    assert dpo("convert", tmp_path / container, tmp_path / "back.jsonl", "--to", "azure") == 0
    assert read_jsonl(tmp_path / "back.jsonl") == RICH_AZURE


@pytest.mark.parametrize("container", ["hf.parquet", "hf-dataset"])
def test_arrow_containers_round_trip_records_without_nulls(tmp_path, container):
    rows = json.loads(json.dumps(RICH_AZURE))
    for output in (rows[0]["input"]["messages"], rows[0]["preferred_output"]):
        for message in output:
            if message.get("content", "") is None:
                del message["content"]  # Arrow cannot tell a null from a missing key
    rows[1]["input"]["messages"][1]["content"] = "Hello"  # nor hold strings and part lists in one column
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    assert dpo("convert", source, tmp_path / container, "--to", "hf") == 0
    assert dpo("convert", tmp_path / container, tmp_path / "back.jsonl", "--from", "hf", "--to", "azure") == 0
    assert read_jsonl(tmp_path / "back.jsonl") == rows


def test_hf_output_is_what_trl_reads(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", RICH_AZURE)
    dpo("convert", source, tmp_path / "hf.jsonl", "--to", "hf")
    first = read_jsonl(tmp_path / "hf.jsonl")[0]
    assert first["prompt"] == RICH_AZURE[0]["input"]["messages"]
    assert first["chosen"] == RICH_AZURE[0]["preferred_output"]
    assert first["rejected"] == RICH_AZURE[0]["non_preferred_output"]
    assert first["tools"] == TOOLS and first["parallel_tool_calls"] is False and first["id"] == "rich-1"


@pytest.mark.parametrize("row", [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    {"chosen": "The sky is blue.", "rejected": "The sky is green."},
    {"chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}],
     "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green."}], "id": 7},
    {"prompt": [{"role": "user", "content": "Sky?"}], "chosen": [{"role": "assistant", "content": "Blue."}],
     "rejected": [{"role": "assistant", "content": "Green."}], "tools": json.dumps(TOOLS)},
], ids=["standard-explicit", "standard-implicit", "conversational-implicit", "conversational-tools-string"])
def test_hf_shapes_round_trip_exactly(tmp_path, row):
    source = write_jsonl(tmp_path / "in.jsonl", [row])
    assert dpo("convert", source, tmp_path / "out.jsonl", "--from", "hf", "--to", "hf") == 0
    expected = dict(row, tools=TOOLS) if "tools" in row else row
    assert read_jsonl(tmp_path / "out.jsonl") == [expected]


def test_implicit_prompt_is_split_like_trl():
    from trl.data_utils import extract_prompt

    fmt = dpo_plugins.get_format("hf")
    for row in ({"chosen": "The sky is blue.", "rejected": "The sky is green."},
                {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                 "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}]}):
        record = fmt.to_record(row)
        trl = extract_prompt(row)
        if isinstance(row["chosen"], str):
            assert (record.prompt[0]["content"], record.chosen[0]["content"]) == (trl["prompt"], trl["chosen"])
        else:
            assert (record.prompt, record.chosen, record.rejected) == (trl["prompt"], trl["chosen"], trl["rejected"])


def test_hh_real_data_converts_losslessly_and_catches_the_empty_completion(tmp_path, capsys):
    # Strict: the one empty completion (line 87) cannot be an Azure row; nothing is written.
    assert dpo("convert", HH, tmp_path / "az.jsonl", "--to", "azure") == 1
    err = capsys.readouterr().err
    assert f"{HH}:87: preferred_output[0].content: cannot be written as azure: empty completion" in err
    assert "read as hh, detected" in err
    assert not list(tmp_path.iterdir())
    # validate names it too, in HH's own terms.
    assert dpo("validate", HH) == 1
    assert f"{HH}:87: chosen: empty completion [empty-completion]" in capsys.readouterr().out

    assert dpo("convert", HH, tmp_path / "az.jsonl", "--to", "azure", "--skip-invalid") == 0
    assert "skipped" in capsys.readouterr().err
    assert dpo("convert", tmp_path / "az.jsonl", tmp_path / "hf.jsonl", "--to", "hf") == 0
    assert dpo("convert", tmp_path / "hf.jsonl", tmp_path / "az2.jsonl", "--to", "azure") == 0
    first, second = read_jsonl(tmp_path / "az.jsonl"), read_jsonl(tmp_path / "az2.jsonl")
    assert len(first) == 399 and first == second
    # and back to HH, byte for byte, for every pair that Azure could hold
    assert dpo("convert", tmp_path / "hf.jsonl", tmp_path / "hh.jsonl", "--to", "hh") == 0
    original = [json.loads(line) for line in gzip.open(HH, "rt")]
    assert read_jsonl(tmp_path / "hh.jsonl") == original[:86] + original[87:]


def test_bad_azure_corpus_names_every_line_and_writes_nothing(tmp_path, capsys):
    corpus = DATA / "azure_bad_lines.jsonl"
    expected = json.loads((DATA / "azure_bad_lines.expected.json").read_text())
    assert dpo("validate", corpus, "--json") == 1
    report = json.loads(capsys.readouterr().out)
    found = {(p["line"], p["rule"], p["json_path"]) for p in report["problems"]}
    for case in expected:
        assert (case["line"], case["rule"], case["json_path"]) in found, case
    assert {p["line"] for p in report["problems"]} == {case["line"] for case in expected} | {0}
    assert report["by_rule"]["min-examples"] == 1

    out = tmp_path / "out.jsonl"
    assert dpo("convert", corpus, out, "--to", "hf") == 1
    err = capsys.readouterr().err
    for case in expected:
        assert f"{corpus}:{case['line']}: {case['json_path']}: " in err
    assert not list(tmp_path.iterdir())


def test_skip_invalid_writes_the_valid_rows(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert dpo("convert", DATA / "azure_bad_lines.jsonl", out, "--to", "hf", "--skip-invalid") == 0
    assert len(read_jsonl(out)) == 1
    assert "(29 lines skipped)" in capsys.readouterr().err


def test_openai_profile_wants_one_assistant_message(tmp_path, capsys):
    source = write_jsonl(tmp_path / "rich.jsonl", RICH_AZURE)
    assert dpo("validate", source, "--profile", "openai") == 1
    out = capsys.readouterr().out
    assert "rich.jsonl:1: preferred_output: must contain exactly one message (the OpenAI profile), found 3" in out
    assert "rich.jsonl:1: input.messages: the OpenAI profile trains on one-turn examples" in out
    assert "rich.jsonl:2:" not in out  # developer + one user turn, one message per output: fine
    assert dpo("convert", source, tmp_path / "o.jsonl", "--to", "openai") == 1
    assert "rich.jsonl:1: preferred_output:" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
    # An HF file checked against a profile: what would fail once converted.
    dpo("convert", source, tmp_path / "hf.jsonl", "--to", "hf")
    assert dpo("validate", tmp_path / "hf.jsonl", "--profile", "openai") == 1
    assert "as openai: must contain exactly one message" in capsys.readouterr().out


def test_azure_file_rules():
    assert [p.rule for p in azure.check_file(FileSummary("f", 9, 100))] == ["min-examples"]
    assert [p.rule for p in azure.check_file(FileSummary("f", 10, 512 * 2**20))] == ["file-size"]
    assert list(azure.check_file(FileSummary("f", 10, 512 * 2**20 - 1))) == []


def test_bom_is_accepted_on_input_and_optional_on_output(tmp_path):
    source = tmp_path / "bom.jsonl"
    source.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in RICH_AZURE).encode())
    assert dpo("convert", source, tmp_path / "plain.jsonl") == 0
    assert dpo("convert", source, tmp_path / "bom-out.jsonl", "--bom") == 0
    assert not (tmp_path / "plain.jsonl").read_bytes().startswith(b"\xef\xbb\xbf")
    assert (tmp_path / "bom-out.jsonl").read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_jsonl(tmp_path / "plain.jsonl") == RICH_AZURE


def test_lint_rules_are_reported_with_their_lines(tmp_path, capsys):
    pair = {"prompt": "Q", "chosen": "A", "rejected": "B"}
    rows = [
        pair,
        {"prompt": "Q", "chosen": "same", "rejected": "same"},
        {"prompt": "Q", "chosen": "", "rejected": "B"},
        {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}],
         "rejected": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "b"}]},
        pair,
    ]
    source = write_jsonl(tmp_path / "lint.jsonl", rows)
    assert dpo("validate", source) == 1
    out = capsys.readouterr().out
    assert f"{source}:2: chosen: chosen and rejected are identical" in out
    assert f"{source}:3: chosen: empty completion [empty-completion]" in out
    assert f"{source}:4: chosen: the output holds user/system turns" in out
    assert f"{source}:5: $: duplicate of line 1 [duplicate, warning]" in out
    assert "hf (detected)" in out


def test_hh_prompt_mismatch_is_an_error_for_its_line(tmp_path, capsys):
    rows = [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hey\n\nAssistant: Go away"}]
    source = write_jsonl(tmp_path / "hh.jsonl", rows)
    assert dpo("validate", source) == 1
    assert f"{source}:1: rejected: the prompt (everything before the last Assistant turn) differs" in capsys.readouterr().out


def test_invalid_utf8_and_json_are_reported_by_line(tmp_path, capsys):
    source = tmp_path / "bad.jsonl"
    source.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "\xff"}\n{oops\n')
    assert dpo("validate", source) == 1
    out = capsys.readouterr().out
    assert f"{source}:2: $: invalid UTF-8 at byte 12" in out
    assert f"{source}:3: $: invalid JSON" in out


OTHER_SHAPES = {
    "hh": {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello there.", "rejected": "\n\nHuman: Hi\n\nAssistant: What?"},
    "ultrafeedback": {
        "prompt": "Hi", "prompt_id": "p1",
        "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}],
        "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "What?"}],
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}],
        "score_chosen": 8.5, "score_rejected": 3.0},
    "llamafactory-alpaca": {"instruction": "Hi", "input": "", "chosen": "Hello there.", "rejected": "What?",
                            "system": "Be nice.", "history": [["Earlier", "Reply"]]},
    "llamafactory-sharegpt": {
        "conversations": [{"from": "human", "value": "Weather in Paris?"},
                          {"from": "function_call", "value": '{"name":"get_weather","arguments":{"city":"Paris"}}'},
                          {"from": "observation", "value": "18C"}, {"from": "gpt", "value": "18C."},
                          {"from": "human", "value": "Thanks"}],
        "chosen": {"from": "gpt", "value": "You are welcome."}, "rejected": {"from": "gpt", "value": "Whatever."},
        "tools": json.dumps([TOOLS[0]["function"]], separators=(",", ":"))},
    "axolotl-chatml-intel": {"system": "Be nice.", "question": "Hi", "chosen": "Hello there.", "rejected": "What?"},
    "rewardbench": {"prompt": "Hi", "chosen": "Hello there.", "rejected": "What?", "chosen_model": "human",
                    "rejected_model": "tulu-2-7b", "subset": "alpacaeval-easy", "id": 7},
    "axolotl-chat-template": {"messages": [{"role": "user", "content": "Hi"}],
                              "chosen": {"role": "assistant", "content": "Hello there."},
                              "rejected": {"role": "assistant", "content": "What?"}},
}


@pytest.mark.parametrize("name", sorted(OTHER_SHAPES))
def test_other_formats_are_detected_and_round_trip(tmp_path, name, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [OTHER_SHAPES[name]])
    assert dpo("convert", source, tmp_path / "same.jsonl") == 0
    assert f"detected format: {name}" in capsys.readouterr().err
    assert read_jsonl(tmp_path / "same.jsonl") == [OTHER_SHAPES[name]]
    # through HF and back
    assert dpo("convert", source, tmp_path / "hf.jsonl", "--to", "hf") == 0
    assert dpo("convert", tmp_path / "hf.jsonl", tmp_path / "back.jsonl", "--to", name) == 0
    assert read_jsonl(tmp_path / "back.jsonl") == [OTHER_SHAPES[name]]


def test_unrepresentable_records_are_errors_for_their_line(tmp_path, capsys):
    source = write_jsonl(tmp_path / "rich.jsonl", RICH_AZURE)
    assert dpo("convert", source, tmp_path / "hh.jsonl", "--to", "hh") == 1
    err = capsys.readouterr().err
    assert "rich.jsonl:1: tools: cannot be written as hh: HH cannot carry tools [unrepresentable]" in err
    assert "rich.jsonl:2: prompt[0].role: cannot be written as hh: HH cannot hold a 'developer' message" in err
    assert not (tmp_path / "hh.jsonl").exists()


def test_read_trl_rows(tmp_path):
    rows = read_trl_rows(HH)
    assert len(rows) == 400 and set(rows[0]) == {"prompt", "chosen", "rejected"}
    assert rows[0]["prompt"][0]["role"] == "user" and rows[0]["chosen"][0]["role"] == "assistant"
    source = write_jsonl(tmp_path / "rich.jsonl", RICH_AZURE)
    rich = read_trl_rows(source, "azure")
    assert json.loads(rich[0]["tools"]) == TOOLS and "id" not in rich[0]
    implicit = write_jsonl(tmp_path / "implicit.jsonl", [{"chosen": "Q: a", "rejected": "Q: b"}])
    assert read_trl_rows(implicit) == [{"prompt": "Q:", "chosen": " a", "rejected": " b"}]  # TRL's split
    with pytest.raises(DpoPluginsError, match=r"azure_bad_lines.jsonl:30: input.messages\[0\].content"):
        read_trl_rows(DATA / "azure_bad_lines.jsonl")


def test_detection_failures_say_what_to_do(tmp_path):
    unknown = write_jsonl(tmp_path / "x.jsonl", [{"question": 1, "answer": 2}])
    with pytest.raises(DpoPluginsError, match="cannot tell the format.*pass --from"):
        read_trl_rows(unknown)
    with pytest.raises(DpoPluginsError, match="unknown format 'nope'; available: .*azure"):
        read_trl_rows(unknown, "nope")


def test_a_third_party_format_converts_through_the_record(registered, tmp_path):
    def to_record(row):
        if not row.get("good"):
            raise RecordError([Problem("good", "missing", "schema")])
        return PreferenceRecord(prompt=[{"role": "user", "content": row["question"]}],
                                chosen=[{"role": "assistant", "content": row["good"]}],
                                rejected=[{"role": "assistant", "content": row["bad"]}])

    class QuestionPairs:
        @hookimpl
        def register_formats(self):
            yield Format(name="question-pairs-io", to_record=to_record, from_record=None,
                         detect=lambda row: "question" in row and "good" in row)

    registered(QuestionPairs(), "question-pairs-io")
    source = write_jsonl(tmp_path / "q.jsonl", [{"question": "Q", "good": "A", "bad": "B"}])
    assert dpo("convert", source, tmp_path / "az.jsonl", "--to", "azure") == 0
    assert read_jsonl(tmp_path / "az.jsonl")[0]["preferred_output"] == [{"role": "assistant", "content": "A"}]


def test_a_crashing_format_plugin_is_named_with_the_line(registered, tmp_path):
    class Broken:
        @hookimpl
        def register_formats(self):
            yield Format(name="broken-io", to_record=lambda row: row["nope"], from_record=None)

    registered(Broken(), "broken-io")
    source = write_jsonl(tmp_path / "b.jsonl", [{"a": 1}, {"a": 2}])
    with pytest.raises(DpoPluginsError, match=r"(?s)b.jsonl:1: \$: format 'broken-io' crashed in to_record\(\): KeyError"
                                              r".*b.jsonl:2: \$: format 'broken-io' crashed"):
        read_trl_rows(source, "broken-io")
    assert not (tmp_path / "out.jsonl").exists()


def test_container_errors_are_clear(tmp_path, capsys):
    import datasets

    pairs = [{"prompt": "Q", "chosen": "A", "rejected": "B"}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(pairs)}).save_to_disk(str(tmp_path / "dd"))
    assert dpo("convert", tmp_path / "dd", tmp_path / "out.jsonl") == 1
    assert f"{tmp_path / 'dd'}: holds the splits train; pass one split's folder" in capsys.readouterr().err
    assert dpo("convert", tmp_path / "dd" / "train", tmp_path / "out.jsonl") == 0
    assert read_jsonl(tmp_path / "out.jsonl") == pairs
    assert dpo("convert", tmp_path / "out.jsonl", tmp_path / "out.txt") == 1
    assert "out.txt: unknown file type" in capsys.readouterr().err
    (tmp_path / "array.json").write_text('[{"prompt": "Q", "chosen": "A", "rejected": "B"}, 3]')
    assert dpo("validate", tmp_path / "array.json") == 1
    assert f"{tmp_path / 'array.json'}:2: $: each element must be a JSON object, found int [json]" in capsys.readouterr().out


def test_every_rule_is_documented():
    """Each rule name a check reports (3rd argument of Problem(...) / self.add(...)) has a row in docs/formats.md."""
    import ast
    import re

    rules = set()
    for path in (Path(dpo_plugins.__file__).parent / "formats").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and len(node.args) >= 3 and isinstance(node.args[2], ast.Constant):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if name in ("Problem", "add"):
                    rules.add(node.args[2].value)
    assert {"json", "utf8", "schema", "role-order", "empty-completion", "duplicate", "double-bos"} <= rules
    docs = (Path(__file__).parent.parent / "docs" / "formats.md").read_text()
    assert rules - set(re.findall(r"^\| `([a-z0-9-]+)`", docs, flags=re.M)) == set()
