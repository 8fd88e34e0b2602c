"""The stage runner: resume, --force, failures that keep earlier outputs,
and the lifecycle hooks that let plugins log, inspect or stop a run."""

from __future__ import annotations

import json

import pytest

from dpo_plugins import StageInfo, hookimpl
from dpo_plugins.errors import PluginError
from dpo_plugins.atomic import atomic_directory, write_text
from dpo_plugins.errors import StageFailed
from dpo_plugins.workflows.stages import Stage, run_stages


class Recorder:
    """Logs every lifecycle call; optionally stops before/after a stage."""

    def __init__(self, stop_before=None, stop_after=None):
        self.calls = []
        self.stop_before, self.stop_after = stop_before, stop_after

    @hookimpl
    def before_stage(self, stage):
        assert isinstance(stage, StageInfo)
        self.calls.append(("before", stage.name, stage.index, stage.stages))
        return "not today" if stage.name == self.stop_before else None

    @hookimpl
    def after_stage(self, stage, outputs):
        self.calls.append(("after", stage.name, {key: path.read_text() for key, path in outputs.items()}))
        return "seen enough" if stage.name == self.stop_after else None

    @hookimpl
    def on_stage_error(self, stage, error):
        self.calls.append(("error", stage.name, str(error)))


def file_stages(tmp_path, runs, settings=None, fail=None):
    """Two stages writing files; the second reads the first's output."""

    def first(done):
        runs.append("first")
        write_text(tmp_path / "out" / "first.txt", "one")
        return {"text": tmp_path / "out" / "first.txt"}

    def second(done):
        runs.append("second")
        if fail:
            raise fail
        write_text(tmp_path / "out" / "second.txt", done["first"]["text"].read_text() + "+two")
        return {"text": tmp_path / "out" / "second.txt"}

    return [Stage("first", first, settings), Stage("second", second)]


def test_lifecycle_hooks_see_every_stage_in_order(tmp_path, registered):
    recorder = registered(Recorder(), "recorder")
    runs = []
    done = run_stages("demo", file_stages(tmp_path, runs), tmp_path / "out", log=lambda line: None)
    assert runs == ["first", "second"]
    assert done["second"]["text"].read_text() == "one+two"
    assert recorder.calls == [
        ("before", "first", 0, ("first", "second")),
        ("after", "first", {"text": "one"}),
        ("before", "second", 1, ("first", "second")),
        ("after", "second", {"text": "one+two"}),
    ]


def test_a_rerun_skips_complete_stages_and_force_reruns_them(tmp_path, registered):
    recorder = registered(Recorder(), "recorder")
    runs, lines = [], []
    run_stages("demo", file_stages(tmp_path, runs), tmp_path / "out", log=lambda line: None)
    run_stages("demo", file_stages(tmp_path, runs), tmp_path / "out", log=lines.append)
    assert runs == ["first", "second"]
    assert lines == ["[1/2] first: complete, skipped (--force reruns it)",
                     "[2/2] second: complete, skipped (--force reruns it)"]
    assert len(recorder.calls) == 4  # skipped stages call no hooks
    run_stages("demo", file_stages(tmp_path, runs), tmp_path / "out", force=True, log=lambda line: None)
    assert runs == ["first", "second"] * 2


def test_changed_settings_or_a_missing_output_rerun_that_stage_and_the_rest(tmp_path):
    runs = []
    run_stages("demo", file_stages(tmp_path, runs, settings={"beta": 0.1}), tmp_path / "out", log=lambda line: None)
    run_stages("demo", file_stages(tmp_path, runs, settings={"beta": 0.2}), tmp_path / "out", log=lambda line: None)
    assert runs == ["first", "second"] * 2
    (tmp_path / "out" / "second.txt").unlink()
    run_stages("demo", file_stages(tmp_path, runs, settings={"beta": 0.2}), tmp_path / "out", log=lambda line: None)
    assert runs == ["first", "second"] * 2 + ["second"]
    marker = json.loads((tmp_path / "out" / ".stages" / "second.json").read_text())
    assert marker["outputs"] == {"text": "second.txt"}


def test_a_failed_stage_keeps_earlier_outputs_says_where_it_stopped_and_resumes(tmp_path, registered):
    recorder = registered(Recorder(), "recorder")
    runs = []
    with pytest.raises(StageFailed) as caught:
        run_stages("demo", file_stages(tmp_path, runs, fail=ValueError("disk full")), tmp_path / "out",
                   log=lambda line: None)
    assert str(caught.value).splitlines() == [
        "demo stopped at stage 'second' (2/2): ValueError: disk full",
        f"  stage 'first' is complete and kept: {tmp_path / 'out' / 'first.txt'}",
        "  re-run the same command to resume: complete stages are skipped (--force reruns them)",
    ]
    assert recorder.calls[-1] == ("error", "second", "disk full")
    assert (tmp_path / "out" / "first.txt").read_text() == "one"
    assert not (tmp_path / "out" / "second.txt").exists()
    run_stages("demo", file_stages(tmp_path, runs), tmp_path / "out", log=lambda line: None)
    assert runs == ["first", "second", "second"]


def test_a_plugin_stops_the_run_before_a_stage(tmp_path, registered):
    recorder = registered(Recorder(stop_before="second"), "gatekeeper")
    runs = []
    with pytest.raises(StageFailed) as caught:
        run_stages("demo", file_stages(tmp_path, runs), tmp_path / "out", log=lambda line: None)
    assert str(caught.value).splitlines()[0] == (
        "demo stopped at stage 'second' (2/2): plugin gatekeeper (test_workflow) stopped the run before stage "
        "'second': not today")
    assert runs == ["first"]
    assert recorder.calls[-1][0] == "error"


def test_a_plugin_stops_the_run_after_a_stage_which_stays_complete(tmp_path, registered):
    registered(Recorder(stop_after="first"), "gatekeeper")
    runs = []
    with pytest.raises(StageFailed, match="stopped the run after stage 'first': seen enough"):
        run_stages("demo", file_stages(tmp_path, runs), tmp_path / "out", log=lambda line: None)
    assert runs == ["first"]
    lines = []
    with pytest.raises(StageFailed):  # the gatekeeper is still there, but 'first' is now skipped
        run_stages("demo", file_stages(tmp_path, runs, fail=ValueError("x")), tmp_path / "out", log=lines.append)
    assert lines[0] == "[1/2] first: complete, skipped (--force reruns it)"


def test_a_crashing_lifecycle_plugin_is_named(tmp_path, registered):
    class Crashes:
        @hookimpl
        def before_stage(self, stage):
            raise KeyError("oops")

    registered(Crashes(), "crashes")
    with pytest.raises(StageFailed) as caught:
        run_stages("demo", file_stages(tmp_path, []), tmp_path / "out", log=lambda line: None)
    assert isinstance(caught.value.error, PluginError)
    assert "plugin crashes (test_workflow) failed in before_stage(): KeyError: 'oops'" in str(caught.value)


def test_atomic_directory_leaves_nothing_on_failure_and_replaces_only_when_asked(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as building:
            (building / "weights").write_text("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(target) as building:
        (building / "weights").write_text("v1")
    assert (target / "weights").read_text() == "v1"
    with pytest.raises(Exception, match="already exists and is not empty"):
        with atomic_directory(target):
            pass
    with atomic_directory(target, replace=True) as building:
        (building / "weights").write_text("v2")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert (target / "weights").read_text() == "v2"
