"""Issue #22, rules 3 and 8: every option and config value is checked before any model loads, naming the
option or ``FILE:LINE: key``; dropped work is counted aloud, and identical pairs are refused by ``dpo train``.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_plugins.cli import main
from dpo_plugins.errors import DpoPluginsError
from dpo_plugins.option_checks import type_problem

FAST = ["--max-steps", "1", "--logging-steps", "1", "--per-device-train-batch-size", "2", "--save-strategy", "no",
        "--gradient-checkpointing", "false", "--disable-tqdm", "true"]


def write_pairs(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def pairs(tmp_path):
    return write_pairs(tmp_path / "pairs.jsonl", [
        {"prompt": f"Question {i}?", "chosen": f"Yes, answer {i}.", "rejected": f"No {i}."} for i in range(4)])


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any model is loaded: the checks must come first."""
    from dpo_plugins.adapters import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(models, "load_model_and_tokenizer", refuse)


@pytest.mark.parametrize("flags, message", [
    (["--max-length", "0"], "--max-length: must be a positive integer"),
    (["--per-device-train-batch-size", "0"], "--per-device-train-batch-size: must be a positive integer"),
    (["--gradient-accumulation-steps", "0"], "--gradient-accumulation-steps: must be a positive integer"),
    (["--beta", "-1"], "--beta: must be a finite number > 0"),
    (["--beta", "nan"], "--beta: must be a finite number > 0"),
    (["--ld-alpha", "2"], "--ld-alpha: must be between 0 and 1"),
    (["--loss", "sigmoid", "sft", "--loss-weights", "nan", "1"], "--loss-weights: must be finite numbers"),
    (["--loss", "sigmoid", "sft", "--loss-weights", "0", "0"], "with a non-zero sum"),
    (["--loss", "sigmoid", "sft", "--loss-weights", "1", "inf"], "--loss-weights: must be finite numbers"),
    (["--lora", "--lora-r", "0"], "--lora-r: must be a positive integer"),
    (["--lora", "--lora-dropout", "1"], "--lora-dropout: must be at least 0 and below 1"),
    (["--sft-first", "--sft-epochs", "0"], "--sft-epochs: must be a number > 0"),
    (["--weight-decay", "nan"], "--weight-decay: must be a number, got nan"),
    (["--truncation-mode", "bogus"], "argument --truncation_mode/--truncation-mode: invalid choice: 'bogus'"),
    (["--lr-scheduler-type", "nope"], "argument --lr_scheduler_type/--lr-scheduler-type: invalid choice: 'nope'"),
    (["--max-steps", "abc"], "argument --max_steps/--max-steps: invalid int value: 'abc'"),
])
def test_train_flags_out_of_range_fail_before_any_model_loads(tmp_path, tiny_model_dir, pairs, capsys,
                                                              no_model_load, flags, message):
    out = tmp_path / "out"
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(pairs), "--output-dir", str(out),
                 *FAST, *flags]) == 1
    err = capsys.readouterr().err
    assert message in err and "this is a bug" not in err, err
    assert not out.exists()


def test_train_config_values_are_typed_and_located(tmp_path, tiny_model_dir, pairs, capsys, no_model_load):
    config = tmp_path / "train.yaml"
    config.write_text(f'model: {tiny_model_dir}\nlora: "false"\nlora_r: "sixteen"\nbf16: "no"\n'
                      "sft_first: 1\nlearning_rate: .nan\n")
    assert main(["train", "--config", str(config), "--data", str(pairs), "--output-dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"{config}:2: lora: expected true or false, got str 'false' (write it without quotes)" in err
    assert f"{config}:3: lora_r: expected an integer, got str 'sixteen'" in err
    assert f"{config}:4: bf16: expected true or false" in err
    assert f"{config}:5: sft_first: expected true or false, got int 1" in err
    assert f"{config}:6: learning_rate: expected a finite number" in err


def test_a_range_problem_in_the_config_names_its_line_unless_a_flag_set_it(tmp_path, tiny_model_dir, pairs,
                                                                          capsys, no_model_load):
    config = tmp_path / "train.yaml"
    config.write_text("beta: 0.1\nmax_length: 0\n")
    argv = ["train", "--config", str(config), "--model", str(tiny_model_dir), "--data", str(pairs)]
    assert main(argv) == 1
    assert f"{config}:2: max_length: must be a positive integer" in capsys.readouterr().err
    assert main([*argv, "--max-length", "-5"]) == 1
    assert "--max-length: must be a positive integer (or unset), got -5" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--batch-size", "-3"), ("--batch-size", "0"), ("--max-length", "-1"),
                                         ("--max-prompts", "0"), ("--max-new-tokens", "0"), ("--top-p", "0"),
                                         ("--temperature", "nan")])
def test_eval_flags_out_of_range_are_refused_by_name(tmp_path, pairs, capsys, flag, value):
    with pytest.raises(SystemExit) as exit:
        main(["eval", "--model", "smollm2", "--data", str(pairs), "--report", str(tmp_path / "r"), flag, value])
    assert exit.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


def test_eval_names_an_unknown_judge_before_loading_anything(tmp_path, tiny_model_dir, pairs, capsys,
                                                            no_model_load):
    report = tmp_path / "r"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(pairs), "--report", str(report),
                 "--judge", "exact-mtach"]) == 1
    err = capsys.readouterr().err
    assert "unknown judge 'exact-mtach'" in err and "exact-match" in err
    assert not report.exists()


def test_merge_weights_must_be_finite_and_not_all_zero(tmp_path, tiny_model_dir, capsys):
    config = tmp_path / "merge.yaml"
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {tiny_model_dir}\n    parameters: {{weight: .nan}}\n"
                      f"  - model: {tiny_model_dir}\n    parameters: {{weight: .inf}}\ndtype: float32\n")
    assert main(["merge", "--config", str(config), "--output", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert f"{config}:4: models[0].parameters.weight: linear parameter 'weight' must be a finite number" in err
    assert f"{config}:6: models[1].parameters.weight" in err
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {tiny_model_dir}\n    parameters: {{weight: 0}}\n"
                      f"  - model: {tiny_model_dir}\n    parameters: {{weight: 0.0}}\ndtype: float32\n")
    assert main(["merge", "--config", str(config), "--output", str(tmp_path / "m")]) == 1
    assert "every model's weight is 0" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                     st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(value=_scalars)
def test_a_config_value_passes_only_when_it_is_of_the_fields_type(value):
    for annotation, fits in [
        (bool, isinstance(value, bool)),
        ("bool", isinstance(value, bool)),
        (int, isinstance(value, int) and not isinstance(value, bool)),
        (float, isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)),
        (float | None, value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                         and math.isfinite(value))),
        ("Optional[str]", value is None or isinstance(value, str)),
        (list[float] | None, value is None or (isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))),
    ]:
        assert (type_problem(value, annotation) is None) == fits, (value, annotation)


# -- rule 8: dropped work is counted, identical pairs refused --------------------------------


def test_identical_pairs_are_an_error_in_train_unless_allowed(tmp_path):
    from dpo_plugins.workflows.convert import read_trl_rows

    data = write_pairs(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "same", "rejected": "same"},
                                             {"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DpoPluginsError, match=r"p.jsonl:1: chosen: chosen and rejected are identical.*"
                                              r"--allow-identical-pairs"):
        read_trl_rows(data, identical_pairs="--allow-identical-pairs")
    assert len(read_trl_rows(data)) == 2


def test_train_refuses_identical_pairs_and_counts_length_drops(tmp_path, tiny_model_dir, capsys, caplog):
    rows = [{"prompt": "tell me more about this?", "chosen": "same", "rejected": "same"}] + [
        {"prompt": ("long " * (40 if i % 2 else 1)) + "?", "chosen": "yes", "rejected": "no"} for i in range(4)]
    data = write_pairs(tmp_path / "p.jsonl", rows)
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(data), *FAST, "--max-length", "20"]
    assert main([*argv, "--output-dir", str(tmp_path / "a")]) == 1
    assert "p.jsonl:1: chosen: chosen and rejected are identical" in capsys.readouterr().err
    caplog.set_level(logging.WARNING, logger="dpo_plugins.train")
    assert main([*argv, "--output-dir", str(tmp_path / "b"), "--allow-identical-pairs"]) == 0
    assert "train data: 2 of 5 pairs dropped: the prompt alone fills max_length 20" in caplog.text
    assert main([*argv, "--output-dir", str(tmp_path / "c"), "--allow-identical-pairs", "--max-length", "2"]) == 1
    err = capsys.readouterr().err
    assert "all 5 pairs have a prompt that fills max_length 2" in err and "this is a bug" not in err


def test_a_number_yaml_reads_as_a_string_is_the_number(tmp_path):
    """YAML 1.1 floats need a dot: `1e-5` is a string to PyYAML; it still sets the learning rate."""
    from dpo_plugins.cli import build_parser
    from dpo_plugins.workflows.train import build_settings

    config = tmp_path / "train.yaml"
    config.write_text("learning_rate: 1e-5\nnum_train_epochs: 2\n")
    args, extra = build_parser().parse_known_args(["train", "--config", str(config)])
    settings = build_settings(args, extra)
    assert settings.dpo.learning_rate == 1e-5 and settings.dpo.num_train_epochs == 2.0
