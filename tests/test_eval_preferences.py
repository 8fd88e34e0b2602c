"""Continuous preferences end to end: a probability judge through `dpo eval`, its AlpacaEval export, `dpo winrate`."""

from __future__ import annotations

import json

import pytest

from dpo_plugins.cli import main
from dpo_plugins.hookspecs import hookimpl
from dpo_plugins.specs import Judge
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
                 "--policy-outputs", str(outputs["policy"]),
                 "--baseline-outputs", str(outputs["baseline"]), "--no-progress"]) == 0
    capsys.readouterr()
    metrics = json.loads((report / "metrics.json").read_text())
    rows = [json.loads(line) for line in (report / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:  # llm-pairwise scores by default: P(a better) in each order; the preference averages the two
        first, swapped = row["p_first_better_policy_first"], row["p_first_better_baseline_first"]
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


class ProbabilityJudges:
    """A plugin judge that is 80% sure the output "x" is better, and two that break the contract."""

    @hookimpl
    def register_judges(self):
        yield Judge(name="confident", fn=lambda prompts, a, b, **params: [0.8 if x == "x" else 0.3 for x in a])
        yield Judge(name="out-of-range", fn=lambda prompts, a, b, **params: [1.5] * len(prompts))
        yield Judge(name="boolean", fn=lambda prompts, a, b, **params: [True] * len(prompts))


def test_plugin_probabilities_become_preferences_and_bad_ones_are_refused(registered):
    from dpo_plugins.errors import PluginError
    from dpo_plugins.evals.judging import judge_both_orders

    registered(ProbabilityJudges(), "probability-judges")
    metrics, rows = judge_both_orders("confident", ["p1", "p2"], ["x", "x"], ["y", "y"])
    assert [row["preference"] for row in rows] == [pytest.approx(1 + (0.8 + 1 - 0.3) / 2)] * 2
    assert metrics["win_rate"] == pytest.approx(0.75) and metrics["wins"] == 2 and metrics["n_wins"] == 2
    for name in ("out-of-range", "boolean"):
        with pytest.raises(PluginError, match=f"judge '{name}' .*a probability in \\[0, 1\\]"):
            judge_both_orders(name, ["p1"], ["x"], ["y"])
