"""dpo anneal: one validated file, explicit reference, resumable stages."""

from __future__ import annotations

import json
import shutil

import pytest

from dpo_plugins import CheckResult, Judge, hookimpl
from dpo_plugins.workflows.anneal import check_stage, load_anneal_plan, merge_stage
from dpo_plugins.errors import StageFailed
from dpo_plugins.workflows.stages import run_stages
from dpo_plugins.errors import ConfigError

from conftest import build_tiny_model


@pytest.fixture(scope="module")
def parents(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("anneal-parents")
    for name, seed in (("a", 0), ("b", 1)):
        build_tiny_model(tokenizer, seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    pairs = [{"prompt": [{"role": "user", "content": f"Say {word}."}],
              "chosen": [{"role": "assistant", "content": word}],
              "rejected": [{"role": "assistant", "content": "No."}]} for word in ("yes", "maybe", "sure", "fine")]
    (root / "pairs.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    return root


def anneal_yaml(parents, output_dir, reference="merged", extra=""):
    return f"""output_dir: {output_dir}
merge:
  merge_method: slerp
  base_model: {parents / "a"}
  models:
    - model: {parents / "a"}
    - model: {parents / "b"}
  parameters:
    t: 0.5
  dtype: float32
anneal:
  data: {parents / "pairs.jsonl"}
  reference: {reference}
  beta: 0.1
{extra}eval:
  data: {parents / "pairs.jsonl"}
"""


def test_a_valid_file_gives_a_plan_with_an_explicit_reference(parents, tmp_path):
    config = tmp_path / "anneal.yaml"
    config.write_text(anneal_yaml(parents, tmp_path / "run"))
    plan = load_anneal_plan(config)
    assert plan.reference == "merged" and plan.reference_path is None
    assert plan.anneal == {"data": str(parents / "pairs.jsonl"), "beta": 0.1}
    assert plan.merged_dir == tmp_path / "run" / "merged"
    assert list(plan.merge.parents) == [str(parents / "a"), str(parents / "b")]

    config.write_text(anneal_yaml(parents, tmp_path / "run", reference=parents / "b"))
    plan = load_anneal_plan(config)
    assert plan.reference == str(parents / "b") and plan.reference_path == (parents / "b").resolve()


def test_the_reference_may_be_a_parent_alias(smollm2_dir, parents, tmp_path):
    config = tmp_path / "anneal.yaml"
    text = anneal_yaml(parents, tmp_path / "run", reference="smollm2")
    config.write_text(text)
    plan = load_anneal_plan(config)
    assert plan.reference == "smollm2" and plan.reference_path == smollm2_dir.resolve()


def test_every_problem_in_every_section_is_listed_with_its_line(parents, tmp_path):
    config = tmp_path / "anneal.yaml"
    text = anneal_yaml(parents, tmp_path / "run", reference="parent-c", extra="  model: elsewhere\n")
    text = text.replace("merge_method: slerp", "merge_method: slrep")
    text = text.replace(f"  data: {parents / 'pairs.jsonl'}\n", f"  data: {tmp_path / 'nope.jsonl'}\n", 1)
    text = text.replace("eval:", "evl:").replace("output_dir:", "output_dir: \n# was:", 1)
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_anneal_plan(config)
    assert caught.value.problems == [
        f"{config}:1: $: eval is required",
        f"{config}:1: output_dir: output_dir must be a directory path",
        f"{config}:4: merge.merge_method: unknown merge method 'slrep'; did you mean 'slerp'? (available: "
        "arcee_fusion, breadcrumbs, breadcrumbs_ties, dare_linear, dare_ties, della, della_linear, karcher, linear, "
        "model_stock, multislerp, nearswap, nuslerp, passthrough, ram, ramplus_tl, sce, slerp, task_arithmetic, ties)",
        f"{config}:13: anneal.data: no such file: {tmp_path / 'nope.jsonl'}",
        f"{config}:14: anneal.reference: model 'parent-c': no such directory (give a local checkpoint directory or "
        "the alias 'smollm2'; models are never downloaded); use 'merged', a parent named under merge: "
        "or a checkpoint path",
        f"{config}:16: anneal.model: set by dpo anneal: the policy is the merged model, the reference is "
        "anneal.reference, the output is OUTPUT_DIR/annealed",
        f"{config}:17: evl: unknown section; did you mean 'eval'? (sections: output_dir, merge, anneal, eval)",
    ]
    assert not (tmp_path / "run").exists()


def test_an_unknown_judge_parameter_is_a_config_problem_before_any_merge(parents, tmp_path):
    config = tmp_path / "anneal.yaml"
    text = anneal_yaml(parents, tmp_path / "run")
    config.write_text(text + "  judge: llm-pairwise\n  judge_params:\n    modle: smollm2\n")
    with pytest.raises(ConfigError) as caught:
        load_anneal_plan(config)
    line = len(text.splitlines()) + 3
    assert caught.value.problems == [f"{config}:{line}: eval.judge_params.modle: judge 'llm-pairwise' has no "
                                     "parameter 'modle'; it accepts: mode, model, tie_margin"]
    assert not (tmp_path / "run").exists()


def test_merge_and_check_stages_resume_and_keep_the_merge_when_a_check_vetoes(parents, tmp_path, registered, capsys):
    config = tmp_path / "anneal.yaml"
    config.write_text(anneal_yaml(parents, tmp_path / "run"))
    plan = load_anneal_plan(config)

    class Veto:
        active = True

        @hookimpl
        def check_merged_model(self, checkpoint):
            yield CheckResult("never", not self.active, "vetoed for the test")

    veto = registered(Veto(), "veto")
    with pytest.raises(StageFailed) as caught:
        run_stages("anneal", [merge_stage(plan), check_stage(plan)], plan.output_dir)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"anneal stopped at stage 'check' (2/2): {plan.merged_dir}: 1 checkpoint check(s) failed:"
    assert f"  stage 'merge' is complete and kept: {plan.merged_dir}" in lines
    checks = json.loads((plan.output_dir / "checks.json").read_text())
    assert [c["name"] for c in checks if not c["passed"]] == ["never"]
    assert (plan.merged_dir / "model.safetensors").is_file()

    veto.active = False
    capsys.readouterr()
    done = run_stages("anneal", [merge_stage(plan), check_stage(plan)], plan.output_dir)
    out = capsys.readouterr().out
    assert "[1/2] merge: complete, skipped (--force reruns it)" in out
    assert "  ok loads_and_generates: " in out
    assert done["check"]["checks"] == plan.output_dir / "checks.json"
    assert sorted(p.name for p in plan.output_dir.iterdir()) == [".stages", "checks.json", "merged"]


def test_the_report_compares_every_model_and_says_which_is_the_reference(tmp_path):
    from dpo_plugins.evals.comparison_report import write_report

    row = {"reward_ties": 0, "mean_margin": 0.25}
    evaluation = {
        "data": "heldout.jsonl", "n_pairs": 8, "reference": "merged", "reference_path": "/runs/merged",
        "models": {
            "smollm2": dict(row, role="parent", is_reference=False, reward_accuracy=0.5, ref_free_accuracy=0.625),
            "merged": dict(row, role="merged", is_reference=True, reward_accuracy=None, mean_margin=None,
                           ref_free_accuracy=0.5),
            "annealed": dict(row, role="annealed", is_reference=False, reward_accuracy=0.875, ref_free_accuracy=0.75),
        },
        "per_pair": {"smollm2": [0.1, -0.2], "merged": [0.0, 0.3], "annealed": [0.4, 0.5]},
    }
    outputs = write_report(evaluation, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["margins.png", "metrics.json", "report.md", "reward_accuracy.png"]
    metrics = json.loads(outputs["metrics"].read_text())
    assert "per_pair" not in metrics and metrics["models"]["annealed"]["reward_accuracy"] == 0.875
    report = outputs["report"].read_text()
    assert "DPO reference: **merged** (`/runs/merged`)" in report
    assert "| merged | merged | (the reference) |  | n/a | 50.0% |" in report
    assert "| annealed | annealed | 87.5% | 0 | +0.250 | 75.0% |" in report
    assert "- reference-free accuracy: merged 50.0% -> annealed 75.0% (+25.0 points)" in report
    for plot in ("reward_accuracy", "margins"):
        assert outputs[plot].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



def test_bad_data_files_are_reported_before_anything_runs(parents, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Hi", "chosen": "Hello"}\n')
    config = tmp_path / "anneal.yaml"
    config.write_text(anneal_yaml(parents, tmp_path / "run").replace(f"data: {parents / 'pairs.jsonl'}", f"data: {bad}"))
    with pytest.raises(ConfigError) as caught:
        load_anneal_plan(config)
    assert [line.split(": ", 1)[0] for line in caught.value.problems] == [f"{config}:12", f"{config}:16"]
    assert all(str(bad) in line for line in caught.value.problems)
    assert not (tmp_path / "run").exists()


def test_dpo_train_settings_are_validated_up_front_with_lines_in_the_anneal_file(parents, tmp_path):
    config = tmp_path / "anneal.yaml"
    config.write_text(anneal_yaml(parents, tmp_path / "run", extra="  bta: 0.2\n"))
    with pytest.raises(ConfigError) as caught:
        load_anneal_plan(config)
    assert caught.value.problems == [f"{config}:15: anneal.bta: unknown option; did you mean 'beta'?"]
    assert not (tmp_path / "run").exists()


TRAINING = """  max_steps: 2
  per_device_train_batch_size: 2
  learning_rate: 1.0e-4
  logging_steps: 1
  report_to: none
"""


def first_logged_rewards(run):
    """TRL's rewards/chosen at step 1: exactly 0 when the reference is the initial policy."""
    state = json.loads((run / "annealed" / "trainer_state.json").read_text())
    return state["log_history"][0]["rewards/chosen"]


def test_dpo_anneal_runs_every_stage_then_resumes_and_reruns_only_what_changed(parents, tmp_path, capsys):
    from dpo_plugins.cli import main

    run = tmp_path / "run"
    config = tmp_path / "anneal.yaml"
    config.write_text(anneal_yaml(parents, run, extra=TRAINING))
    assert main(["anneal", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("[")] == [
        "[1/5] merge", "[2/5] check", "[3/5] anneal", "[4/5] eval", "[5/5] report"]
    assert sorted(p.name for p in run.iterdir()) == [
        ".dpo-plugins-output", ".stages", "annealed", "checks.json", "evaluation.json", "margins.png", "merged", "metrics.json",
        "report.md", "reward_accuracy.png"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["models"]) == [str(parents / "a"), str(parents / "b"), "merged", "annealed"]
    assert metrics["reference"] == "merged" and metrics["n_pairs"] == 4
    assert metrics["models"]["merged"]["is_reference"] and metrics["models"]["merged"]["reward_accuracy"] is None
    annealed = metrics["models"]["annealed"]
    assert 0 <= annealed["reward_accuracy"] <= 1 and annealed["mean_margin"] != 0
    trainer_state = json.loads((run / "annealed" / "trainer_state.json").read_text())
    assert trainer_state["global_step"] == 2
    assert first_logged_rewards(run) == 0.0  # the reference is the merged model, the policy's start
    assert "| annealed | annealed |" in (run / "report.md").read_text()

    assert main(["anneal", "--config", str(config)]) == 0
    assert capsys.readouterr().out.count("complete, skipped") == 5

    config.write_text(anneal_yaml(parents, run, extra=TRAINING) + "  max_length: 64\n")
    assert main(["anneal", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.count("complete, skipped") == 3 and "[4/5] eval\n" in out and "[5/5] report\n" in out


class ShorterJudge:
    @hookimpl
    def register_judges(self):
        def shorter(prompts, outputs_a, outputs_b, **params):
            return ["a" if len(a) < len(b) else "b" if len(b) < len(a) else "tie" for a, b in zip(outputs_a, outputs_b)]

        yield Judge(name="shorter", fn=shorter)


def test_the_reference_can_be_a_parent_and_is_used_for_training_and_evaluation(parents, tmp_path, capsys,
                                                                               registered):
    from dpo_plugins.cli import main

    registered(ShorterJudge(), "shorter-judge")
    run = tmp_path / "run"
    config = tmp_path / "anneal.yaml"
    text = anneal_yaml(parents, run, reference=parents / "b", extra=TRAINING)
    config.write_text(text + "  judge: shorter\n  max_new_tokens: 4\n")
    assert main(["anneal", "--config", str(config)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    winrate = metrics["winrate"]
    assert (winrate["judge"], winrate["policy"], winrate["baseline"]) == ("shorter", "annealed", "merged")
    assert winrate["wins"] + winrate["losses"] + winrate["ties"] == 4  # the four distinct prompts
    assert "- judge shorter: annealed wins" in (run / "report.md").read_text()
    assert metrics["reference_path"] == str((parents / "b").resolve())
    assert [name for name, row in metrics["models"].items() if row["is_reference"]] == [str(parents / "b")]
    assert metrics["models"]["merged"]["reward_accuracy"] is not None
    assert first_logged_rewards(run) != 0.0  # trained against the parent, not the merged model
    assert "DPO reference: **" + str(parents / "b") + "**" in (run / "report.md").read_text()


def test_a_stopped_anneal_keeps_the_merge_and_checks_and_says_where_it_stopped(parents, tmp_path, capsys,
                                                                              registered):
    from dpo_plugins.cli import main

    class NoTrainingToday:
        @hookimpl
        def before_stage(self, stage):
            return "no training today" if stage.name == "anneal" else None

    registered(NoTrainingToday(), "no-training")
    run = tmp_path / "run"
    config = tmp_path / "anneal.yaml"
    config.write_text(anneal_yaml(parents, run, extra=TRAINING))
    assert main(["anneal", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert ("anneal stopped at stage 'anneal' (3/5): plugin no-training (test_anneal) stopped the run before "
            "stage 'anneal': no training today") in err
    assert f"  stage 'merge' is complete and kept: {run / 'merged'}" in err
    assert f"  stage 'check' is complete and kept: {run / 'checks.json'}" in err
    assert sorted(p.name for p in run.iterdir()) == [".dpo-plugins-output", ".stages", "checks.json", "merged"]




@pytest.mark.slow
def test_the_worked_example_in_the_docs_runs_end_to_end(smollm2_dir, tmp_path):
    """examples/merge-anneal, shown verbatim in docs/merge-anneal.md: SmolLM2 merged
    with a variant of itself trained in the same script, annealed, compared."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    example = root / "examples" / "merge-anneal"
    docs = (root / "docs" / "merge-anneal.md").read_text()
    for name in ("run.sh", "anneal.yaml"):
        assert (example / name).read_text().strip() in docs, f"{name} is not shown verbatim in the docs"
    copy = tmp_path / "merge-anneal"
    shutil.copytree(example, copy, ignore=shutil.ignore_patterns("runs"))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", str(copy / "run.sh")], env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    run = copy / "runs" / "anneal"
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["models"]) == ["smollm2", "runs/variant", "merged", "annealed"]
    assert metrics["reference"] == "merged" and metrics["n_pairs"] + metrics["n_dropped"] == 8
    annealed, merged = metrics["models"]["annealed"], metrics["models"]["merged"]
    assert annealed["reward_accuracy"] is not None and merged["ref_free_accuracy"] is not None
    report = (run / "report.md").read_text()
    assert "## Merged vs annealed" in report
    assert f"- reference-free accuracy: merged {100 * merged['ref_free_accuracy']:.1f}% -> annealed" in report
    assert (run / "reward_accuracy.png").is_file() and (run / "margins.png").is_file()
    assert all(check["passed"] for check in json.loads((run / "checks.json").read_text()))


def test_a_parent_retrained_in_place_reruns_the_merge(parents, tmp_path, tokenizer):
    config = tmp_path / "anneal.yaml"
    b = tmp_path / "b"
    shutil.copytree(parents / "b", b)
    config.write_text(anneal_yaml(parents, tmp_path / "run").replace(str(parents / "b"), str(b)))
    before = merge_stage(load_anneal_plan(config)).settings
    assert merge_stage(load_anneal_plan(config)).settings == before  # stable while nothing changes
    build_tiny_model(tokenizer, seed=2).save_pretrained(b)
    assert merge_stage(load_anneal_plan(config)).settings != before
