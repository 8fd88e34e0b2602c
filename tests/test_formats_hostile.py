"""Rows a hostile (or just unlucky) user feeds `dpo convert` and `dpo validate`.

Each case of issue #12 about row contents: data that used to be lost
silently, written mangled, or that crashed the run with a traceback. Every
one now gives correct output or one `PATH:LINE: json.path: message` line
per problem, with every bad line listed.
"""

from __future__ import annotations

import json

import pytest

from dpo_plugins import Format, hookimpl
from dpo_plugins.errors import DpoPluginsError
from dpo_plugins.workflows.convert import validate
from dpo_plugins.records import PreferenceRecord
from test_formats import RICH_AZURE, dpo, read_jsonl, write_jsonl

USER = [{"role": "user", "content": "Weather?"}]
GOOD = {"input": {"messages": USER}, "preferred_output": [{"role": "assistant", "content": "Sunny."}],
        "non_preferred_output": [{"role": "assistant", "content": "No idea."}]}


def azure(**changes) -> dict:
    row = json.loads(json.dumps(GOOD))
    row.update(changes)
    return row


def with_messages(messages) -> dict:
    row = azure()
    row["input"]["messages"] = messages
    return row


def convert(tmp_path, rows, *args):
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    return dpo("convert", source, tmp_path / "out.jsonl", *args)


def deep(levels: int) -> str:
    """JSON text of a list nested ``levels`` deep (too deep for json.dumps)."""
    return "[" * levels + "]" * levels


# -- silent data loss -------------------------------------------------------

@pytest.mark.parametrize("target,keys", [
    ("hh", {"chosen": "X", "rejected": "Y"}),
    ("llamafactory-alpaca", {"instruction": "X", "chosen": "Y"}),
    ("llamafactory-sharegpt", {"conversations": "X", "system": "Y"}),
    ("axolotl-chatml-intel", {"question": "X", "system": "Y"}),
    ("axolotl-chat-template", {"messages": "X", "rejected": "Y"}),
    ("hf", {"prompt": "X", "tools": "Y"}),
    ("ultrafeedback", {"chosen": "X", "rejected": "Y"}),
])
def test_extra_fields_named_like_the_target_schema_never_overwrite_the_pair(tmp_path, target, keys):
    row = azure(**keys, id="r1")
    assert convert(tmp_path, [row], "--from", "azure", "--to", target) == 0
    written = read_jsonl(tmp_path / "out.jsonl")[0]
    assert written["dpo_metadata"] == keys and written["id"] == "r1"
    assert dpo("convert", tmp_path / "out.jsonl", tmp_path / "back.jsonl", "--from", target, "--to", "azure") == 0
    assert read_jsonl(tmp_path / "back.jsonl") == [row]


@pytest.mark.parametrize("target,extra", [
    ("hh", "prompt"), ("llamafactory-alpaca", "question"), ("axolotl-chatml-intel", "instruction"),
    ("llamafactory-sharegpt", "messages"), ("axolotl-chat-template", "conversations")])
def test_extra_fields_never_change_how_the_output_is_detected(tmp_path, capsys, target, extra):
    row = azure(**{extra: "X"})
    assert convert(tmp_path, [row], "--from", "azure", "--to", target) == 0
    assert dpo("convert", tmp_path / "out.jsonl", tmp_path / "back.jsonl", "--to", "azure") == 0
    assert f"detected format: {target}" in capsys.readouterr().err
    assert read_jsonl(tmp_path / "back.jsonl") == [row]


def test_a_malformed_metadata_namespace_is_an_error(tmp_path, capsys):
    rows = [{"prompt": "Q", "chosen": "A", "rejected": "B", "dpo_metadata": 3},
            {"prompt": "Q", "chosen": "A", "rejected": "B", "id": 1, "dpo_metadata": {"id": 2}}]
    assert convert(tmp_path, rows, "--from", "hf") == 1
    err = capsys.readouterr().err
    assert "in.jsonl:1: dpo_metadata: must be an object" in err
    assert "in.jsonl:2: dpo_metadata.id: is also a top-level field" in err


def test_text_beside_a_tool_call_is_not_dropped_silently(tmp_path, capsys):
    call = {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "call_1_0", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]}
    row = with_messages(USER + [call, {"role": "tool", "tool_call_id": "call_1_0", "content": "sun"}])
    row["input"]["tools"] = [{"type": "function", "function": {"name": "weather"}}]
    assert convert(tmp_path, [row], "--to", "llamafactory-sharegpt") == 1
    err = capsys.readouterr().err
    assert ("in.jsonl:1: prompt[1].content: llamafactory-sharegpt cannot hold it exactly: "
            "'Let me check.' becomes None [lossy]") in err
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("target", ["llamafactory-alpaca", "llamafactory-sharegpt", "hh", "axolotl-chatml-intel"])
def test_weight_and_name_are_errors_by_default_and_counted_with_lossy(tmp_path, capsys, target):
    row = with_messages([{"role": "user", "content": "Hi", "name": "ann"},
                         {"role": "assistant", "content": "Hello", "weight": 0},
                         {"role": "user", "content": "Weather?"}])
    if target == "axolotl-chatml-intel":
        row = with_messages([{"role": "user", "content": "Weather?", "name": "ann"}])
    assert convert(tmp_path, [row, row], "--to", target) == 1
    err = capsys.readouterr().err
    assert f"in.jsonl:1: prompt[0].name: {target} cannot hold this field: dropped [lossy]" in err
    assert "in.jsonl:2: prompt[0].name" in err
    assert not (tmp_path / "out.jsonl").exists()

    assert convert(tmp_path, [row, row], "--to", target, "--lossy") == 0
    err = capsys.readouterr().err
    assert f"lossy {tmp_path / 'in.jsonl'}:1: prompt[0].name: {target} cannot hold this field: dropped [lossy, warning]" in err
    assert "lost prompt[].name: 2 time(s)" in err
    if target != "axolotl-chatml-intel":
        assert "lost prompt[].weight: 2 time(s)" in err
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 2


def test_hf_implicit_prompt_differing_at_the_first_character_round_trips(tmp_path):
    rows = [{"chosen": "Yes ", "rejected": "No"}, {"chosen": " a", "rejected": " b"}]
    assert convert(tmp_path, rows, "--from", "hf", "--to", "hf") == 0
    assert read_jsonl(tmp_path / "out.jsonl") == rows


def test_hh_label_without_its_space_is_an_error_not_a_rewrite(tmp_path, capsys):
    row = {"chosen": "\n\nHuman:hi\n\nAssistant: a", "rejected": "\n\nHuman:hi\n\nAssistant: b"}
    assert convert(tmp_path, [row], "--from", "hh") == 1
    assert 'in.jsonl:1: chosen: "\\n\\nHuman:" must be followed by a space' in capsys.readouterr().err


@pytest.mark.parametrize("row,expected", [
    ({"instruction": "i", "input": ["a", "b"], "chosen": "c", "rejected": "r"}, "input: must be a string, found list"),
    ({"instruction": "i", "system": 7, "chosen": "c", "rejected": "r"}, "system: must be a string, found int"),
    ({"instruction": "i", "history": [[1, 2]], "chosen": "c", "rejected": "r"},
     "history: must be a list of [question, answer] string pairs"),
    ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "a"},
      "rejected": {"from": "gpt", "value": "b"}, "tools": {"name": "f"}}, "tools: must be a JSON list of function schemas"),
    ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "a"},
      "rejected": {"from": "gpt", "value": "b"}, "system": 7}, "system: must be a string, found int"),
    ({"system": 7, "question": "q", "chosen": "a", "rejected": "b"}, "system: must be a string"),
], ids=["alpaca-input-list", "alpaca-system-int", "alpaca-history-ints", "sharegpt-tools-object", "sharegpt-system-int",
        "intel-system-int"])
def test_wrong_types_are_errors_in_validate_and_convert_alike(tmp_path, capsys, row, expected):
    assert convert(tmp_path, [row]) == 1
    assert f"in.jsonl:1: {expected}" in capsys.readouterr().err
    assert dpo("validate", tmp_path / "in.jsonl") == 1
    assert f"in.jsonl:1: {expected}" in capsys.readouterr().out


# -- crashes that became line errors -----------------------------------------

CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize("row,expected", [
    (with_messages([{"role": ["user"], "content": "hi"}]), "input.messages[0].role: ['user'] is not allowed here"),
    (with_messages([{"role": {"a": 1}, "content": "hi"}]), "input.messages[0].role: {'a': 1} is not allowed here"),
    (with_messages(USER + [{"role": "assistant", "content": None, "tool_calls": [dict(CALL, id={"x": 1})]},
                           {"role": "tool", "tool_call_id": "c1", "content": "r"}]),
     "input.messages[1].tool_calls[0].id: a tool call needs a string id"),
    (with_messages(USER + [{"role": "assistant", "content": None, "tool_calls": [CALL]},
                           {"role": "tool", "tool_call_id": ["c1"], "content": "r"}]),
     "input.messages[2].tool_call_id: a tool message needs the string id"),
], ids=["role-list", "role-dict", "call-id-dict", "tool-call-id-list"])
def test_unhashable_values_are_line_errors_and_every_line_is_listed(tmp_path, capsys, row, expected):
    assert convert(tmp_path, [row, GOOD, row], "--from", "azure") == 1
    err = capsys.readouterr().err
    assert f"in.jsonl:1: {expected}" in err and f"in.jsonl:3: {expected}" in err
    assert convert(tmp_path, [row, GOOD, row], "--from", "azure", "--skip-invalid") == 0
    assert read_jsonl(tmp_path / "out.jsonl") == [GOOD]
    assert dpo("validate", tmp_path / "in.jsonl", "--from", "azure") == 1
    assert f"in.jsonl:3: {expected}" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["chosen", "messages"])
def test_axolotl_chat_template_with_a_list_role_is_a_line_error(tmp_path, capsys, where):
    row = {"messages": [{"role": "user", "content": "q"}], "chosen": {"role": "assistant", "content": "a"},
           "rejected": {"role": "assistant", "content": "b"}}
    if where == "chosen":
        row["chosen"]["role"] = ["assistant"]
    else:
        row["messages"][0]["role"] = ["user"]
    write_jsonl(tmp_path / "in.jsonl", [row])
    assert dpo("validate", tmp_path / "in.jsonl", "--from", "axolotl-chat-template") == 1
    path = "chosen.role" if where == "chosen" else "messages[0].role"
    assert f"in.jsonl:1: {path}: must be a string [role]" in capsys.readouterr().out


@pytest.mark.parametrize("levels", [254, 600, 1020])
@pytest.mark.parametrize("where", ["metadata", "message"])
def test_deep_nesting_is_a_line_error_in_convert_and_validate(tmp_path, capsys, levels, where):
    """Up to 1023 levels in all (the reader's limit; deeper is a `json` error), 3 of them the row's own."""
    good = json.dumps(GOOD)
    if where == "metadata":
        bad = good[:-1] + f', "extra": {deep(levels)}}}'
    else:
        bad = good.replace('"content": "Sunny."', f'"content": {deep(levels)}')
    (tmp_path / "in.jsonl").write_text(f"{bad}\n{good}\n{bad}\n")
    assert dpo("convert", tmp_path / "in.jsonl", tmp_path / "out.jsonl", "--from", "azure", "--to", "hf") == 1
    err = capsys.readouterr().err
    for line in (1, 3):
        assert f"in.jsonl:{line}: $: nested more than 254 levels deep; the JSON writers stop there [nesting]" in err
    assert "Traceback" not in err
    assert dpo("validate", tmp_path / "in.jsonl", "--from", "azure") == 1
    assert "in.jsonl:3: $: nested more than 254 levels deep" in capsys.readouterr().out


def test_nesting_the_writers_can_write_still_converts(tmp_path):
    good = json.dumps(GOOD)
    (tmp_path / "in.jsonl").write_text(good[:-1] + f', "extra": {deep(200)}}}\n')
    assert dpo("convert", tmp_path / "in.jsonl", tmp_path / "out.jsonl", "--from", "azure", "--to", "hf") == 0
    assert dpo("convert", tmp_path / "out.jsonl", tmp_path / "back.jsonl", "--from", "hf", "--to", "azure") == 0
    assert read_jsonl(tmp_path / "back.jsonl") == read_jsonl(tmp_path / "in.jsonl")


def hf_with_call(call) -> dict:
    return {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                       {"role": "tool", "tool_call_id": "c1", "content": "r"}, {"role": "user", "content": "q2"}],
            "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}


def test_hf_tool_calls_sharegpt_cannot_hold_are_line_errors(tmp_path, capsys):
    invalid = hf_with_call(dict(CALL, function={"name": "f", "arguments": "{bad"}))
    missing = hf_with_call({"id": "c1", "type": "function"})
    assert convert(tmp_path, [invalid, missing], "--from", "hf", "--to", "llamafactory-sharegpt") == 1
    err = capsys.readouterr().err
    assert ("in.jsonl:1: prompt[1].tool_calls[0].function: cannot be written as llamafactory-sharegpt: sharegpt "
            "stores a call as a function name with JSON arguments; this call has none [unrepresentable]") in err
    assert "in.jsonl:2: prompt[1].tool_calls[0].function: a tool call needs a function object with a string name" in err
    assert "Traceback" not in err


def test_a_key_with_a_newline_cannot_forge_output_lines(tmp_path, capsys):
    row = azure()
    row["input"]["x\nforged.jsonl:9: $: fake [schema]\r\x1b[2J"] = 1
    write_jsonl(tmp_path / "in.jsonl", [row])
    assert dpo("validate", tmp_path / "in.jsonl") == 1
    out = capsys.readouterr().out
    assert not any(line.startswith("forged.jsonl") for line in out.splitlines())
    assert "in.jsonl:1: input.x\\nforged.jsonl:9: $: fake [schema]\\r\\x1b[2J: unknown field" in out
    assert convert(tmp_path, [row]) == 1
    assert "input.x\\nforged" in capsys.readouterr().err


# -- a crashing plugin hook is its row's error --------------------------------

def test_a_hook_crash_is_that_rows_error_and_the_run_goes_on(registered, tmp_path, capsys):
    def to_record(row):
        return PreferenceRecord(prompt=[{"role": "user", "content": row["q"]}],
                                chosen=[{"role": "assistant", "content": row["a"]}],
                                rejected=[{"role": "assistant", "content": row["b"]}])

    def from_record(record):
        if record.chosen[0]["content"] == "boom":
            raise ZeroDivisionError("division by zero")
        return {"q": record.prompt[0]["content"], "a": record.chosen[0]["content"], "b": record.rejected[0]["content"]}

    class Fragile:
        @hookimpl
        def register_formats(self):
            yield Format(name="fragile-io", to_record=to_record, from_record=from_record)

    registered(Fragile(), "fragile-io")
    rows = [{"q": "Q", "a": "A", "b": "B"}, {"q": "Q"}, {"q": "Q", "a": "boom", "b": "B"}, {"q": "Q2", "a": "A", "b": "B"}]
    assert convert(tmp_path, rows, "--from", "fragile-io") == 1
    err = capsys.readouterr().err
    assert "in.jsonl:2: $: format 'fragile-io' crashed in to_record(): KeyError: 'a'" in err
    assert ("in.jsonl:3: $: format 'fragile-io' crashed in from_record(): ZeroDivisionError: division by zero "
            "(a bug in plugin fragile-io (test_formats_hostile)) [plugin-crash]") in err
    assert "Traceback" not in err
    assert convert(tmp_path, rows, "--from", "fragile-io", "--skip-invalid") == 0
    assert read_jsonl(tmp_path / "out.jsonl") == [rows[0], rows[3]]
    report = validate(tmp_path / "in.jsonl", "fragile-io")
    assert [f.line for f in report.errors] == [2]


# -- the rich Azure rows still round trip through HF exactly ------------------

def test_rich_azure_rows_still_cross_hf_exactly(tmp_path):
    assert convert(tmp_path, RICH_AZURE, "--to", "hf") == 0
    assert dpo("convert", tmp_path / "out.jsonl", tmp_path / "back.jsonl", "--to", "azure") == 0
    assert read_jsonl(tmp_path / "back.jsonl") == RICH_AZURE


# -- exact JSON: the helpers files.py is to read and write rows with ----------

def test_exactjson_keeps_integers_beyond_64_bits_and_only_whole_boms():
    from dpo_plugins.formats import exactjson

    raw = b'{"n": 184467440737095516160, "m": -99999999999999999999999, "x": 1.5, "s": "12345678901234567890"}'
    row = exactjson.loads(raw)
    assert row == {"n": 184467440737095516160, "m": -99999999999999999999999, "x": 1.5, "s": "12345678901234567890"}
    assert type(row["n"]) is int
    assert exactjson.dumps(row) == raw.replace(b": ", b":").replace(b", ", b",")
    small = b'{"n":18446744073709551615,"f":1e+300}'
    assert exactjson.loads(small) == {"n": 2**64 - 1, "f": 1e300} and exactjson.dumps(exactjson.loads(small)) == small
    assert exactjson.strip_bom(b"\xef\xbb\xbf[1]") == b"[1]"
    for partial in (b"\xbb[1]", b"\xef\xbb[1]", b"\xbf\xef\xbb\xbf[1]"):
        assert exactjson.strip_bom(partial) == partial


def test_duplicate_check_hashes_integers_beyond_64_bits():
    from dpo_plugins.formats.lint import Duplicates

    tools = [{"type": "function", "function": {"name": "f", "parameters": {"maximum": 2**70}}}]
    record = PreferenceRecord(prompt=USER, chosen=[{"role": "assistant", "content": "a"}],
                              rejected=[{"role": "assistant", "content": "b"}], tools=tools)
    duplicates = Duplicates()
    assert list(duplicates.check(record, 1)) == []
    assert [p.message for p in duplicates.check(record, 2)] == ["duplicate of line 1"]


# -- cases whose fix lives in files.py (the reader), owned by another change ---

def test_integers_beyond_64_bits_are_kept_exactly(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "n": 184467440737095516160}\n')
    assert dpo("convert", tmp_path / "in.jsonl", tmp_path / "out.jsonl") == 0
    assert '"n":184467440737095516160' in (tmp_path / "out.jsonl").read_text()


def test_a_json_file_starting_with_part_of_a_bom_is_an_error(tmp_path):
    (tmp_path / "in.json").write_bytes(b'\xbb\xef[{"prompt": "p", "chosen": "a", "rejected": "b"}]')
    with pytest.raises(DpoPluginsError):
        validate(tmp_path / "in.json")
