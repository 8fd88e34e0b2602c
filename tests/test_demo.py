"""The main job's pipeline, on a tiny model (the real run: `make demo`)."""

from __future__ import annotations

import json

import pytest

from dpo_plugins.atomic import OUTPUT_MARKER
from dpo_plugins.cli import main
from dpo_plugins.commands.demo import summary_lines
from dpo_plugins.workflows.demo import DemoSettings, fresh_output_dir, run_demo
from dpo_plugins.workflows.demo_report import smooth
from dpo_plugins.errors import DpoPluginsError
from dpo_plugins.evals.stats import wilson_interval


def test_the_demo_pipeline_runs_end_to_end_and_reports_its_steps_numbers(tmp_path, tiny_model_dir, capsys):
    settings = DemoSettings(model=str(tiny_model_dir), judge_model=str(tiny_model_dir), train_pairs=8,
                            heldout_pairs=6, judge_check_pairs=4, judged_prompts=2, max_steps=2, batch_size=4,
                            max_length=192, max_new_tokens=4)
    output = fresh_output_dir(tmp_path / "demo")
    metrics = run_demo(output, main, settings)
    console = capsys.readouterr()

    def read(name):
        return json.loads((output / name / "metrics.json").read_text())

    def rows(name):
        return [json.loads(line) for line in (output / name / "generations.jsonl").read_text().splitlines()]

    assert json.loads((output / "metrics.json").read_text()) == metrics
    heldout, evaluation = metrics["heldout"], read("eval")
    # Each model's reference-free numbers come from the one dpo eval, and equal that model's own ref-free eval.
    alone = {}
    for name, model in (("model", output / "train"), ("ref", tiny_model_dir)):
        assert main(["eval", "--model", str(model), "--reward-mode", "ref-free-mean", "--data",
                     str(output / "heldout.jsonl"), "--max-length", "192", "--no-progress", "--report",
                     str(tmp_path / f"alone-{name}")]) == 0
        alone[name] = json.loads((tmp_path / f"alone-{name}" / "metrics.json").read_text())
        for key, value in evaluation["ref_free_mean"][name].items():
            assert alone[name][key] == value, (name, key)
    assert heldout["reward_accuracy_before"] == alone["ref"]["reward_accuracy"]
    assert heldout["reward_accuracy_after"] == alone["model"]["reward_accuracy"]
    assert heldout["implicit_reward_accuracy_after"] == evaluation["reward_accuracy"]
    assert heldout["implicit_mean_margin_after"] == evaluation["mean_margin"]
    for key, own in (("before", alone["ref"]), ("after", alone["model"]), ("implicit_after", evaluation)):
        entry = heldout["with_interval"][key]
        n = own["n_pairs"]  # pairs whose prompt fits max_length; the others are counted in n_dropped
        assert entry["accuracy"] == own["reward_accuracy"] and entry["n_pairs"] == n == 6 - own["n_dropped"]
        assert entry["correct"] / n == own["reward_accuracy"]
        assert entry["wilson_95"] == wilson_interval(entry["correct"], n - entry["correct"], 0)
    assert evaluation["reward_mode"] == "dpo" and evaluation["ref"] == str(tiny_model_dir)
    win = metrics["win_rate"]
    assert win["wins"] + win["ties"] + win["losses"] == 2
    for key in ("wins", "ties", "losses", "win_rate", "win_rate_ci", "first_position_rate"):
        assert win[key] == evaluation[key], key
    assert all("p_first_better_policy_first" in row for row in rows("eval"))  # the default judge scores
    state = json.loads((output / "train" / "trainer_state.json").read_text())
    assert metrics["training"]["curves"]["loss"] == [e["loss"] for e in state["log_history"] if "loss" in e]
    assert metrics["training"]["first_loss"] == pytest.approx(0.6931, abs=1e-4)
    assert len(metrics["timings_s"]) == 4
    for name in ("report.md", "training.png", "implicit_margins.png", "win_rate.png",
                 "train/model.safetensors", "demo.log"):
        assert (output / name).stat().st_size > 0, name
    report = (output / "report.md").read_text()
    implicit = heldout["with_interval"]["implicit_after"]
    assert "weak judge" in report and f"{100 * heldout['reward_accuracy_before']:.1f}%" in report
    assert f"{100 * implicit['accuracy']:.1f}% ({implicit['correct']}/{implicit['n_pairs']}; 95% CI" in report
    assert "lower bound above 50% means" in report

    summary = summary_lines(metrics)
    low, high = implicit["wilson_95"]
    assert f"implicit DPO reward accuracy: {implicit['accuracy']:.1%} (95% CI {low:.1%}-{high:.1%})" in summary[0]
    assert f"{win['wins']}W/{win['ties']}T/{win['losses']}L" in summary[2]
    # the interval is the verdicts' (ties half), so it is printed next to that rate, not the mean preference
    ci = win["win_rate_ci"]
    assert f"{win['discrete_win_rate']:.1%} with ties half (95% CI {ci[0]:.1%}-{ci[1]:.1%})" in summary[2]
    assert win["discrete_win_rate"] == evaluation["discrete_win_rate"]
    # the judge measured on the first held-out pairs' human labels, next to the floors, in the report and the summary
    check = metrics["judge_check"]
    assert check == evaluation["judge_check"] and list(check["annotators"]) == ["llm-pairwise", "longest", "random"]
    assert check["n_pairs"] == 4 and check["annotators"]["llm-pairwise"]["# parsed"] == 8
    judge = check["annotators"]["llm-pairwise"]
    low, high = judge["Human agreement 95% CI"]
    assert "## Judge check" in report and "longest (floor)" in report
    assert f"judge llm-pairwise vs the 4 held-out human labels: human agreement {judge['Human agreement']:.1f}% " \
           f"(95% CI {low:.1f}%-{high:.1f}%); floors: longest" in summary[3]

    step_lines = [line for line in console.out.splitlines() if line.startswith("[")]
    assert [line[:5] for line in step_lines] == [f"[{k}/4]" for k in range(1, 5)]
    assert all(line.endswith("s") for line in step_lines if not line.startswith("[3/4]"))
    assert "Loading weights" not in console.err and "FutureWarning" not in console.err
    assert "Tokenizing" not in console.err and "dpo train: loss =" not in console.err
    log = (output / "demo.log").read_text()
    assert "$ dpo train --model" in log and "dpo_plugins.train: INFO: loss = 1 * sigmoid()" in log


def test_smoothing_is_a_trailing_mean():
    assert smooth([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]
    assert smooth([]) == []


def test_the_demo_never_replaces_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DpoPluginsError, match="was not written by dpo-plugins"):
        fresh_output_dir(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    earlier = tmp_path / "earlier"
    fresh_output_dir(earlier)
    (earlier / "stale.json").write_text("{}")
    assert sorted(p.name for p in fresh_output_dir(earlier).iterdir()) == [OUTPUT_MARKER]
