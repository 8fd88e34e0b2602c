"""Issue #22, rule 4: a key given twice is an error, in JSON rows and in YAML configs, with the line and the key.

JSON readers (orjson, the standard library, ``datasets``) and YAML loaders keep a repeated key's last value
silently, so ``"chosen": "good", ..., "chosen": "EVIL"`` would train on EVIL with no word said.
"""

from __future__ import annotations

import json
import textwrap

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_plugins.cli import main
from dpo_plugins.errors import ConfigError
from dpo_plugins.formats.exactjson import duplicate_keys
from dpo_plugins.workflows.config import load_yaml

# Keys and strings that hold what a key's end looks like (`":`, escaped quotes), to fool a textual count.
_text = st.text(alphabet=st.sampled_from(['a', 'b', '"', ':', '\\', ' ', 'é', '\n']), max_size=6)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | _text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children, max_size=3),
    max_leaves=12,
)


def _pairs_text(value, spaces: str) -> str:
    """JSON text of ``value`` in which a dict may be a list of (key, value) pairs (so keys may repeat)."""
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{json.dumps(k)}{spaces}:{_pairs_text(v, spaces)}" for k, v in value) + "}"
    if isinstance(value, dict):
        return _pairs_text(Pairs(value.items()), spaces)
    if isinstance(value, list):
        return "[" + ",".join(_pairs_text(item, spaces) for item in value) + "]"
    return json.dumps(value)


class Pairs(list):
    pass


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(_text, _json, max_size=4), spaces=st.sampled_from(["", " ", "\n "]))
def test_json_without_a_repeated_key_has_none(value, spaces):
    raw = _pairs_text(value, spaces).encode()
    assert duplicate_keys(raw, orjson.loads(raw)) == []


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(_text, _json, min_size=1, max_size=4), data=st.data(),
       spaces=st.sampled_from(["", " ", "\t"]))
def test_a_repeated_key_is_found_wherever_it_is(value, data, spaces):
    key = data.draw(st.sampled_from(sorted(value)))
    repeat = data.draw(_json)
    where = data.draw(st.sampled_from(["top", "nested"]))
    if where == "top":
        raw = _pairs_text(Pairs([*value.items(), (key, repeat)]), spaces).encode()
        expected = ((), key)
    else:
        raw = _pairs_text({"outer": [Pairs([*value.items(), (key, repeat)])]}, spaces).encode()
        expected = (("outer", 0), key)
    assert expected in duplicate_keys(raw, orjson.loads(raw))


def test_a_repeated_key_in_a_row_is_an_error_naming_line_and_key(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "p", "chosen": "ok", "rejected": "no"}\n'
                    '{"prompt": "p", "chosen": "good", "rejected": "no", "chosen": "EVIL"}\n')
    assert main(["validate", str(data), "--from", "hf"]) == 1
    assert f"{data}:2: chosen: duplicate key 'chosen'" in capsys.readouterr().out
    assert main(["convert", str(data), str(tmp_path / "out.jsonl"), "--from", "hf"]) == 1
    assert f"{data}:2: chosen: duplicate key 'chosen'" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_a_repeated_key_in_a_json_array_names_the_row(tmp_path, capsys):
    data = tmp_path / "pairs.json"
    data.write_text('[{"prompt": "p", "chosen": "ok", "rejected": "no"},\n'
                    ' {"prompt": "p", "chosen": [{"role": "assistant", "content": "a", "content": "b"}], '
                    '"rejected": [{"role": "assistant", "content": "n"}]}]')
    assert main(["validate", str(data), "--from", "hf"]) == 1
    assert f"{data}:2: chosen[0].content: duplicate key 'content'" in capsys.readouterr().out


def test_a_repeated_key_in_a_yaml_config_is_an_error_naming_line_and_key(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(textwrap.dedent("""\
        lora: true
        loss_param:
          beta: 1
          beta: 2
        lora: false
        """))
    with pytest.raises(ConfigError) as error:
        load_yaml(config)
    assert error.value.problems == [
        f"{config}:4: loss_param.beta: duplicate key 'beta' (first given on line 3); YAML keeps only the last "
        "value, so give it once",
        f"{config}:5: lora: duplicate key 'lora' (first given on line 1); YAML keeps only the last value, "
        "so give it once",
    ]


def test_yaml_merge_keys_are_not_repeats(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("base: &b {x: 1}\nover:\n  <<: *b\n  x: 2\n")
    assert load_yaml(config).data["over"] == {"x": 2}


def test_dpo_train_refuses_a_config_with_a_repeated_key(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("lora: true\nlora: false\n")
    assert main(["train", "--config", str(config), "--data", str(tmp_path / "x.jsonl")]) == 1
    assert f"{config}:2: lora: duplicate key 'lora'" in capsys.readouterr().err
