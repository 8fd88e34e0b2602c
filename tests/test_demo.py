"""The main job's pipeline, on a tiny model (the real run: `make demo`)."""

from __future__ import annotations

import json

import pytest

from dpo_plugins.cli import main
from dpo_plugins.atomic import OUTPUT_MARKER
from dpo_plugins.workflows.demo import DemoSettings, fresh_output_dir, run_demo
from dpo_plugins.errors import DpoPluginsError


def test_the_demo_pipeline_runs_end_to_end_and_reports_its_steps_numbers(tmp_path, tiny_model_dir):
    settings = DemoSettings(model=str(tiny_model_dir), judge_model=str(tiny_model_dir), train_pairs=8,
                            heldout_pairs=6, judged_prompts=2, max_steps=2, batch_size=4, max_length=192,
                            max_new_tokens=4)
    output = fresh_output_dir(tmp_path / "demo")
    metrics = run_demo(output, main, settings)

    def read(name):
        return json.loads((output / name / "metrics.json").read_text())

    assert json.loads((output / "metrics.json").read_text()) == metrics
    assert metrics["heldout"]["reward_accuracy_before"] == read("eval-before")["reward_accuracy"]
    assert metrics["heldout"]["reward_accuracy_after"] == read("eval-after-ref-free")["reward_accuracy"]
    assert metrics["heldout"]["implicit_reward_accuracy_after"] == read("eval-after")["reward_accuracy"]
    assert metrics["win_rate"]["wins"] + metrics["win_rate"]["ties"] + metrics["win_rate"]["losses"] == 2
    state = json.loads((output / "train" / "trainer_state.json").read_text())
    assert metrics["training"]["curves"]["loss"] == [e["loss"] for e in state["log_history"] if "loss" in e]
    assert metrics["training"]["first_loss"] == pytest.approx(0.6931, abs=1e-4)
    assert len(metrics["timings_s"]) == 6
    for name in ("report.md", "training.png", "margins.png", "win_rate.png", "train/adapter_model.safetensors"):
        assert (output / name).stat().st_size > 0, name
    report = (output / "report.md").read_text()
    assert "weak judge" in report and f"{100 * metrics['heldout']['reward_accuracy_before']:.1f}%" in report


def test_the_demo_never_replaces_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DpoPluginsError, match="was not written by dpo-plugins"):
        fresh_output_dir(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    earlier = tmp_path / "earlier"
    fresh_output_dir(earlier)
    (earlier / "stale.json").write_text("{}")
    assert sorted(p.name for p in fresh_output_dir(earlier).iterdir()) == [OUTPUT_MARKER]
