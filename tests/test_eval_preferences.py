"""Continuous preferences end to end: a probability judge through `dpo eval`, its AlpacaEval export, `dpo winrate`."""

from __future__ import annotations

import json

import pytest

from dpo_plugins.cli import main
from dpo_plugins.evals.preferences import head_to_head
from test_eval_cli import ROWS, data, models  # noqa: F401  (fixtures)


def test_probability_judge_gives_continuous_preferences_everywhere(models, data, tmp_path, capsys):  # noqa: F811
    report = tmp_path / "report"
    prompts = list({json.dumps(row["prompt"]): row["prompt"] for row in ROWS}.values())
    outputs = {}
    for side, texts in (("policy", ["Blue, mostly.", "Four.", "A ripe pear."]), ("baseline", ["Grey", "5", "Rock"])):
        outputs[side] = tmp_path / f"{side}.jsonl"
        outputs[side].write_text("".join(json.dumps({"prompt": p, "output": t}) + "\n" for p, t in zip(prompts, texts)))
    assert main(["eval", "--model", str(models["policy"]), "--ref", str(models["ref"]), "--data", str(data),
                 "--report", str(report), "--judge", "llm-pairwise", "--judge-param", f"model={models['ref']}",
                 "--judge-param", "probability=true", "--policy-outputs", str(outputs["policy"]),
                 "--baseline-outputs", str(outputs["baseline"]), "--no-progress"]) == 0
    capsys.readouterr()
    metrics = json.loads((report / "metrics.json").read_text())
    rows = [json.loads(line) for line in (report / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:  # P(a better) in each order; the policy's preference averages the two
        first, swapped = row["verdict_policy_first"], row["verdict_baseline_first"]
        assert isinstance(first, float) and isinstance(swapped, float)
        assert row["preference"] == pytest.approx(1 + (first + 1 - swapped) / 2, abs=1e-12)
    preferences = [row["preference"] for row in rows]
    assert any(p not in (1.0, 1.5, 2.0) for p in preferences)
    expected = head_to_head(preferences)
    assert metrics["win_rate"] == expected["win_rate"] and metrics["standard_error"] == expected["standard_error"]
    assert metrics["discrete_win_rate"] == expected["discrete_win_rate"]
    assert metrics["wins"] + metrics["losses"] + metrics["ties"] == 3

    annotations = json.loads((report / "annotations.json").read_text())
    assert [a["preference"] for a in annotations] == preferences
    assert annotations[0]["generator_2"] == str(models["policy"])
    assert annotations[0]["generator_1"] == metrics["baseline"]
    outputs = json.loads((report / "model_outputs.json").read_text())
    assert [o["output"] for o in outputs] == [row["policy_output"] for row in rows]

    for judgments in ("generations.jsonl", "annotations.json"):
        assert main(["winrate", str(report / judgments), "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["win_rate"] == metrics["win_rate"] and printed["n_total"] == 3
