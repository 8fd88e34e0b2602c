"""Nothing the program did not create is deleted or replaced; interrupts and full disks leave nothing behind.

Each test is a case from issue #12, driven through the real ``dpo`` command
(in process, or as a subprocess where a signal or a resource limit is needed).
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpo_plugins import hookimpl
from dpo_plugins.atomic import OUTPUT_MARKER, staging_folder
from dpo_plugins.cli import main
from dpo_plugins.plugins import pm

DEMO = Path(__file__).resolve().parent.parent / "dpo_plugins" / "data" / "demo" / "hh-harmless-azure.jsonl"


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(DEMO.read_text(encoding="utf-8").splitlines(keepends=True)[:20]), encoding="utf-8")
    return path


def convert(*argv):
    return main(["convert", *map(str, argv), "--to", "hf"])


def test_a_folder_the_program_did_not_write_is_never_replaced(pairs, tmp_path, capsys):
    folder = tmp_path / "v"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.txt").write_text("precious")
    assert convert(pairs, folder) == 1
    assert f"{folder}: exists and was not written by dpo-plugins" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["sub", "thesis.txt"]
    assert (folder / "thesis.txt").read_text() == "precious"


def test_a_folder_the_program_wrote_is_replaced(pairs, tmp_path):
    out = tmp_path / "ds"
    assert convert(pairs, out) == 0
    assert (out / OUTPUT_MARKER).is_file()
    (out / "stale.txt").write_text("from the earlier conversion's folder")
    assert convert(pairs, out) == 0
    assert not (out / "stale.txt").exists() and (out / "dataset_info.json").is_file()


def test_the_current_folder_is_never_an_output(pairs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert convert(pairs, ".") == 1
    assert "is the current folder" in capsys.readouterr().err
    assert pairs.is_file()


@pytest.mark.parametrize("make, name, message", [
    (lambda p: p.mkdir(), "x.jsonl", "is a folder; give a file name"),
    (lambda p: p.write_text("mine"), "noext", "is a file; this output is a folder"),
    (lambda p: p.symlink_to(p.parent), "link", "is a symbolic link"),
])
def test_outputs_of_the_wrong_kind_are_refused_and_left_alone(pairs, tmp_path, capsys, make, name, message):
    target = tmp_path / name
    make(target)
    before = target.is_dir(), target.is_file()
    assert convert(pairs, target) == 1
    assert message in capsys.readouterr().err
    assert (target.is_dir(), target.is_file()) == before


def test_a_parent_that_is_a_file_is_an_error_before_reading(pairs, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert convert(pairs, tmp_path / "file" / "out.jsonl") == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def test_eval_refuses_a_report_path_before_loading_any_model(pairs, tmp_path, capsys):
    report = tmp_path / "report"
    report.write_text("not a folder")
    # the model does not exist: reporting the report path proves it was checked before any model was loaded
    assert main(["eval", "--model", str(tmp_path / "no-such-model"), "--data", str(pairs), "--report", str(report)]) == 1
    err = capsys.readouterr().err
    assert f"{report}: is a file" in err and "no-such-model" not in err
    assert report.read_text() == "not a folder"


def test_merge_force_never_replaces_a_folder_holding_an_input(tmp_path, capsys):
    parents = tmp_path / "models"
    parents.mkdir()
    config = tmp_path / "merge.yaml"
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {parents / 'a'}\n    parameters: {{weight: 1.0}}\n")
    assert main(["merge", "--config", str(config), "--output", str(tmp_path), "--force"]) == 1
    assert f"contains the input {config}" in capsys.readouterr().err
    assert config.is_file()


def _big_input(tmp_path, copies=4000):
    line = DEMO.read_text(encoding="utf-8").splitlines(keepends=True)[0]
    path = tmp_path / "big.jsonl"
    path.write_text(line * copies, encoding="utf-8")
    return path


def _dpo(*argv, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "dpo_plugins", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize("sig, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_an_interrupt_removes_temporary_output_and_says_so_in_one_line(tmp_path, sig, code, name):
    source, out = _big_input(tmp_path, copies=200_000), tmp_path / "out.jsonl"
    process = _dpo("convert", source, out, "--to", "hf")
    while not list(tmp_path.glob(".out.jsonl.partial-*")) and process.poll() is None:  # it ends by itself
        time.sleep(0.05)
    assert process.poll() is None, "the conversion finished before it could be interrupted"
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code
    assert err.strip().splitlines()[-1] == f"dpo convert: interrupted ({name}); unfinished outputs were removed"
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl"]


def test_a_killed_runs_temporary_output_is_removed_by_the_next_run(pairs, tmp_path):
    out = tmp_path / "out.jsonl"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left_over = tmp_path / f".out.jsonl.partial-{dead.stdout.strip()}-abcd"
    left_over.mkdir()
    (left_over / "out").write_text("half a file")
    alive = staging_folder(out)  # this process's own, still in use
    assert convert(pairs, out) == 0
    assert not left_over.exists() and alive.exists() and out.is_file()


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    source, out = _big_input(tmp_path), tmp_path / "out.jsonl"

    def small_disk():  # writes past 1 MB fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    process = _dpo("convert", source, out, "--to", "hf", preexec_fn=small_disk)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1
    assert "Traceback" not in err and err.strip().startswith("dpo convert: error: ")
    assert "File too large" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl"]


class CrashingFileCheck:
    @hookimpl
    def register_formats(self):
        from dpo_plugins import Format
        from dpo_plugins.formats import hf

        def check_file(summary):
            raise ZeroDivisionError("a bug in a plugin")

        yield Format(name="crashy", to_record=hf.to_record, from_record=hf.from_record, check_file=check_file)


def test_an_unexpected_error_names_its_plugin_and_shows_the_traceback_only_with_debug(pairs, tmp_path, capsys):
    plugin = CrashingFileCheck()
    pm.register(plugin, name="crashy-plugin")
    try:
        hf_pairs = tmp_path / "pairs.jsonl"
        assert convert(pairs, hf_pairs) == 0
        capsys.readouterr()
        assert main(["validate", str(hf_pairs), "--from", "crashy"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("dpo validate: error: unexpected ZeroDivisionError: a bug in a plugin (in plugin crashy-plugin")
        assert "Traceback" not in err and "--debug" in err
        assert main(["validate", str(hf_pairs), "--from", "crashy", "--debug"]) == 1
        assert "Traceback" in capsys.readouterr().err
    finally:
        pm.unregister(plugin)
