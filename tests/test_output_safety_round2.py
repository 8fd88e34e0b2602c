"""Issue #22, rules 1, 2, 5 and 6: no output touches an input, success means something was written,
a run owns its output folder, and a saved model is complete or absent.

Each case from the issue runs through the real ``dpo`` command (in process); the rule itself
(``atomic.check_output``) is also tested by property over generated folder trees.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpo_plugins.atomic import OUTPUT_MARKER, check_output, mark
from dpo_plugins.cli import main
from dpo_plugins.errors import DpoPluginsError

DEMO = Path(__file__).resolve().parent.parent / "dpo_plugins" / "data" / "demo" / "hh-harmless-azure.jsonl"
FAST = ["--max-steps", "1", "--logging-steps", "1", "--per-device-train-batch-size", "2", "--save-strategy", "no",
        "--gradient-checkpointing", "false", "--disable-tqdm", "true"]


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(DEMO.read_text(encoding="utf-8").splitlines(keepends=True)[:6]), encoding="utf-8")
    return path


def hf_pairs(tmp_path, count=4):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Question {i}?", "chosen": f"A helpful answer {i}.", "rejected": f"No {i}."}
            for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# -- rule 1: no output may be, or contain, an input -----------------------------------


@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink"])
def test_convert_never_writes_over_its_input(pairs, tmp_path, capsys, alias):
    before = pairs.read_bytes()
    output = {"same": lambda: pairs,
              "symlink": lambda: _symlink(tmp_path / "link.jsonl", pairs),
              "hardlink": lambda: _hardlink(tmp_path / "hard.jsonl", pairs)}[alias]()
    assert main(["convert", str(pairs), str(output), "--skip-invalid", "--lossy", "--to", "hf"]) == 1
    err = capsys.readouterr().err
    assert "input" in err or "symbolic link" in err
    assert pairs.read_bytes() == before


def test_convert_refuses_the_input_through_a_symlinked_folder(pairs, tmp_path, capsys):
    (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)
    assert main(["convert", str(pairs), str(tmp_path / "alias" / pairs.name), "--to", "azure"]) == 1
    assert "is the input" in capsys.readouterr().err


def _symlink(link, target):
    link.symlink_to(target)
    return link


def _hardlink(link, target):
    os.link(target, link)
    return link


def merge_config(tmp_path, models=("nowhere-a", "nowhere-b")):
    config = tmp_path / "merge.yaml"
    entries = "".join(f"  - model: {model}\n    parameters: {{weight: 0.5}}\n" for model in models)
    config.write_text(f"merge_method: linear\nmodels:\n{entries}dtype: float32\n")
    return config


def test_merge_force_never_removes_a_parent_of_the_current_folder(tmp_path, monkeypatch, capsys):
    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    (tmp_path / "project" / "notes.txt").write_text("precious")
    config = merge_config(work)
    monkeypatch.chdir(work)
    code = main(["merge", "--config", str(config), "--output", str(tmp_path / "project"), "--force"])
    assert code == 1
    assert "contains the current folder" in capsys.readouterr().err
    assert (tmp_path / "project" / "notes.txt").read_text() == "precious" and config.is_file()


def test_merge_force_never_replaces_a_folder_dpo_did_not_write(tmp_path, tiny_model_dir, capsys):
    config = merge_config(tmp_path, [tiny_model_dir, tiny_model_dir])
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.txt").write_text("precious")
    assert main(["merge", "--config", str(config), "--output", str(theirs), "--force"]) == 1
    assert "was not written by dpo-plugins" in capsys.readouterr().err
    assert (theirs / "thesis.txt").read_text() == "precious"


def test_merge_output_may_not_hold_its_config_file_or_a_parent(tmp_path, tiny_model_dir, capsys):
    holder = tmp_path / "holder"
    holder.mkdir()
    mark(holder, "dpo merge")  # even a folder dpo-plugins wrote, with --force
    config = merge_config(holder, [tiny_model_dir, tiny_model_dir])
    assert main(["merge", "--config", str(config), "--output", str(holder), "--force"]) == 1
    assert f"contains the input {config}" in capsys.readouterr().err
    assert config.is_file()
    outer = merge_config(tmp_path, [tiny_model_dir, tiny_model_dir])
    assert main(["merge", "--config", str(outer), "--output", str(tiny_model_dir.parent), "--force"]) == 1
    assert "contains the input" in capsys.readouterr().err


def test_train_never_writes_into_its_own_model(tmp_path, tiny_model_dir, capsys):
    import shutil

    prev = tmp_path / "runs" / "prev"
    shutil.copytree(tiny_model_dir, prev)
    mark(prev, "dpo train")  # an earlier run's output: replaceable, but not while it is this run's model
    (prev / "dpo-plugins-model-complete.json").write_text("{}\n")
    weights = (prev / "model.safetensors").read_bytes()
    data = hf_pairs(tmp_path)
    for flags in (["--model", str(prev)], ["--model", str(tiny_model_dir), "--ref-model", str(prev)]):
        for output in (prev, prev.parent):
            assert main(["train", *flags, "--data", str(data), "--output-dir", str(output), *FAST]) == 1
            err = capsys.readouterr().err
            assert "input" in err and str(prev) in err, err
    assert (prev / "model.safetensors").read_bytes() == weights


def test_train_never_writes_over_its_config_or_data(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    mark(out, "dpo train")
    config = out / "train.yaml"
    config.write_text(f"model: {tiny_model_dir}\n")
    data = hf_pairs(tmp_path)
    assert main(["train", "--config", str(config), "--data", str(data), "--output-dir", str(out), *FAST]) == 1
    assert f"contains the input {config}" in capsys.readouterr().err
    assert config.is_file()


def test_eval_report_may_not_hold_the_model(tmp_path, tiny_model_dir, capsys):
    data = hf_pairs(tmp_path)
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data),
                 "--report", str(tiny_model_dir.parent)]) == 1
    assert "contains the input" in capsys.readouterr().err


# The rule by property: over generated trees, an output is refused exactly when it is an input or
# an ancestor of one (seen through a symlinked folder, a hard link, or as written).
_names = st.sampled_from(["a", "b", "c"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=st.lists(_names, min_size=1, max_size=3), target=st.lists(_names, min_size=1, max_size=4),
       through=st.sampled_from(["plain", "symlinked-folder", "hardlink"]))
def test_check_output_refuses_exactly_the_outputs_that_cover_an_input(tmp_path_factory, source, target, through):
    root = tmp_path_factory.mktemp("tree")
    data = root.joinpath(*source, "data.jsonl")
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("{}\n")
    output = root.joinpath(*target)
    if through == "symlinked-folder":
        (root / "alias").symlink_to(root, target_is_directory=True)
        output = root.joinpath("alias", *target)
    covered = output.resolve() in (data, *data.parents)
    if through == "hardlink" and not output.exists():
        output.parent.mkdir(parents=True, exist_ok=True)
        os.link(data, output)
        covered = True
    for folder in (True, False):
        if output.exists() and output.is_dir() != folder:
            continue  # the wrong kind of output: another refusal, tested elsewhere
        try:
            check_output(output, folder=folder, inputs=[data], force=True)
            refused = False
        except DpoPluginsError as error:
            refused = "input" in str(error)
            assert refused or "not written by dpo-plugins" in str(error), error
            if not refused:
                continue
        assert refused == covered, (output, data)
    assert data.read_text() == "{}\n"


# -- rule 2: success means something was written ---------------------------------------


def test_convert_with_no_valid_row_fails_and_keeps_the_existing_output(tmp_path, capsys):
    bad = tmp_path / "allbad.jsonl"
    bad.write_text('{"nope": 1}\nnot json\n')
    existing = tmp_path / "existing.jsonl"
    existing.write_text('{"prompt": "kept"}\n')
    assert main(["convert", str(bad), str(existing), "--skip-invalid", "--from", "hf"]) == 1
    err = capsys.readouterr().err
    assert "no row to write" in err and "nothing written" in err
    assert existing.read_text() == '{"prompt": "kept"}\n'


def test_an_empty_file_read_with_from_is_no_success(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["convert", str(empty), str(tmp_path / "out.jsonl"), "--from", "hf"]) == 1
    assert "no row to write" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_training_data_without_pairs_is_an_error(tmp_path):
    from dpo_plugins.workflows.convert import read_trl_rows

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DpoPluginsError, match="no rows"):
        read_trl_rows(empty, "hf")


# -- rule 5: a run owns its output folder --------------------------------------------


def test_a_report_rewritten_into_its_folder_leaves_no_earlier_file(tmp_path):
    from dpo_plugins.evals.report import write_report

    report = tmp_path / "report"
    write_report(report, {"n_pairs": 0})
    assert (report / OUTPUT_MARKER).is_file()
    for stale in ("generations.jsonl", "annotations.json"):  # as a judged run leaves them
        (report / stale).write_text("from the earlier run\n")
    write_report(report, {"n_pairs": 0})
    assert not (report / "generations.jsonl").exists() and not (report / "annotations.json").exists()
    assert (report / "metrics.json").is_file()


def test_a_report_is_never_written_over_a_folder_dpo_did_not_make(tmp_path):
    from dpo_plugins.evals.report import write_report

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.md").write_text("precious")
    with pytest.raises(DpoPluginsError, match="not written by dpo-plugins"):
        write_report(theirs, {"n_pairs": 0})
    assert (theirs / "notes.md").read_text() == "precious"


def test_sft_model_is_reused_only_for_the_same_inputs_and_settings(tmp_path, tiny_model_dir, capsys, caplog):
    import logging

    out = tmp_path / "out"
    data = hf_pairs(tmp_path)
    common = ["train", "--model", str(tiny_model_dir), "--output-dir", str(out), "--sft-first", *FAST]
    caplog.set_level(logging.INFO, logger="dpo_plugins.train")
    assert main([*common, "--data", str(data)]) == 0, capsys.readouterr().err
    made = json.loads((out / "sft-model" / "dpo-plugins-sft-complete.json").read_text())
    assert (out / "dpo-plugins-model-complete.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert not [p for p in out.iterdir() if "partial" in p.name]
    (out / "stale-from-the-first-run.txt").write_text("x")  # as if the earlier run had written it
    caplog.clear()
    assert main([*common, "--data", str(data)]) == 0
    assert "reusing the finished SFT model" in caplog.text
    assert not (out / "stale-from-the-first-run.txt").exists()
    other = tmp_path / "other.jsonl"
    other.write_text(data.read_text().replace("helpful", "different"))
    caplog.clear()
    assert main([*common, "--data", str(other)]) == 0
    assert "made from other inputs or settings" in caplog.text
    assert json.loads((out / "sft-model" / "dpo-plugins-sft-complete.json").read_text())["rows"] != made["rows"]
    caplog.clear()
    assert main([*common, "--data", str(other), "--sft-learning-rate", "1e-3"]) == 0
    assert "made from other inputs or settings" in caplog.text


# -- rule 6: a saved model is complete or absent -----------------------------------------


def test_a_model_save_killed_part_way_is_never_read_as_a_model(tmp_path, tiny_model_dir):
    import shutil

    from dpo_plugins.adapters.models import MODEL_COMPLETE, resolve_model, save_complete_model

    out = tmp_path / "run"
    out.mkdir()
    mark(out, "dpo train")
    with pytest.raises(DpoPluginsError, match="without a completely saved model"):
        resolve_model(str(out))  # training, nothing saved yet

    def weights_then_death(folder):
        folder.mkdir()
        shutil.copy(tiny_model_dir / "model.safetensors", folder)
        raise KeyboardInterrupt  # killed before the tokenizer was written

    with pytest.raises(KeyboardInterrupt):
        save_complete_model(weights_then_death, out)
    assert not (out / "model.safetensors").exists(), "weights moved in without their tokenizer"
    with pytest.raises(DpoPluginsError, match="without a completely saved model"):
        resolve_model(str(out))
    save_complete_model(lambda folder: shutil.copytree(tiny_model_dir, folder), out)
    assert (out / MODEL_COMPLETE).is_file() and (out / "tokenizer_config.json").is_file()
    assert resolve_model(str(out)) == out


def test_no_output_lies_inside_an_input_folder(pairs, tmp_path, tiny_model_dir, capsys):
    dataset = tmp_path / "ds"
    assert main(["convert", str(pairs), str(dataset), "--to", "hf"]) == 0
    before = sorted(p.name for p in dataset.iterdir())
    assert main(["convert", str(dataset), str(dataset / "state.json"), "--to", "hf"]) == 1
    assert f"is inside the input folder {dataset}" in capsys.readouterr().err
    assert sorted(p.name for p in dataset.iterdir()) == before
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(pairs),
                 "--report", str(tiny_model_dir / "report")]) == 1
    assert "is inside the input folder" in capsys.readouterr().err
    assert not (tiny_model_dir / "report").exists()


def test_a_win_rate_over_no_prompt_is_no_success(tmp_path, tiny_model_dir, capsys):
    data = hf_pairs(tmp_path)
    empty = tmp_path / "outputs.jsonl"
    empty.write_text("")
    report = tmp_path / "report"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--report", str(report),
                 "--judge", "exact-match", "--policy-outputs", str(empty), "--baseline-outputs", str(empty),
                 "--no-progress"]) == 1
    assert "no prompt to judge" in capsys.readouterr().err
    assert not report.exists()
