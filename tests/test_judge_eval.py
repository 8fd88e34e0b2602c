"""`dpo judge-eval`: AlpacaEval's evaluator columns equal AlpacaEval's code; floors; the judge cache; bad input."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
from alpaca_eval import analyze  # a declared test dependency: imported plainly, never skipped
from hypothesis import given, settings, strategies as st

from dpo_plugins import Judge, hookimpl
from dpo_plugins.cli import main
from dpo_plugins.errors import DpoPluginsError
from dpo_plugins.evals.judge_agreement import (annotation_rows, contains_list, evaluator_columns, human_agreement,
                                               judge_check, labelled_pairs)
from dpo_plugins.evals.judging import OrderAnswers, judge_both_orders, judge_orders

logging.getLogger().setLevel(logging.WARNING)  # AlpacaEval logs at INFO
DEMO_DATA = Path(__file__).parent.parent / "dpo_plugins" / "data" / "demo" / "hh-harmless-azure.jsonl"


def heldout_pairs(n: int = 100):
    """The demo's held-out HH pairs (the last ``n`` of the shipped file) as texts."""
    from dpo_plugins.workflows.convert import read_trl_rows

    return labelled_pairs(read_trl_rows(DEMO_DATA, "azure")[-n:], str(DEMO_DATA))


def synthetic(seed: int, n: int = 40, kind: str = "verdict"):
    """Pairs with lists and lengths on both sides, and one order's answers with misses (None)."""
    rng = random.Random(seed)

    def text(i, side):
        body = f"answer {side} {i} " + "word " * rng.randint(0, 25)
        if rng.random() < 0.3:
            body += "\n1. first\n2) second"
        if rng.random() < 0.2:
            body += "\n  - a bullet"
        return body

    prompts, chosen, rejected = [f"question {i}" for i in range(n)], [text(i, "c") for i in range(n)], \
        [text(i, "r") for i in range(n)]

    def answers():
        judgments = [None if rng.random() < 0.1 else rng.random() if kind == "probability"
                     else rng.choice(["a", "b", "tie"]) for _ in range(n)]
        return OrderAnswers(judgments, [rng.random() / 10 for _ in range(n)], [None] * n, [None] * n, [False] * n)

    return prompts, chosen, rejected, answers(), answers()


def alpaca_eval_columns(rows):
    """AlpacaEval's ``get_metrics_evaluator`` on our annotations, the human labels as its gold annotations."""
    import pandas as pd

    frame = pd.DataFrame(rows).assign(generator="judged", datasplit="eval", price_per_example=0.0)
    frame["preference"] = frame["preference"].astype(float)
    human = frame.assign(preference=frame["human_preference"])
    analyzer = analyze.Analyzer(gold_crossannotations=human, gold_annotations=human, n_annotators=1)
    return analyze.get_metrics_evaluator(analyzer, frame)


@pytest.mark.parametrize("kind", ["verdict", "probability"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluator_columns_equal_alpaca_eval_analyze(kind, seed):
    prompts, chosen, rejected, first, swapped = synthetic(seed, kind=kind)
    rows = annotation_rows("judge", prompts, chosen, rejected, first, swapped)
    ours, theirs = evaluator_columns(rows), alpaca_eval_columns(rows)
    for column in ("Human agreement", "Proba. prefer 1", "Time [seconds/1000 examples]"):
        assert ours[column] == pytest.approx(theirs[column], rel=1e-12, abs=1e-12), column
    for column in ("Proba. prefer longer", "Proba. prefer lists", "# parsed"):
        assert ours[column] == theirs[column], column
    assert ours["# parsed"] < 2 * len(prompts)  # the misses are counted, not judged
    low, high = ours["Human agreement 95% CI"]
    assert low < ours["Human agreement"] < high


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab1.)-*• \n\tZ9")), max_size=30))
def test_list_detection_is_alpaca_evals(text):
    from alpaca_eval.utils import contains_list as theirs

    assert contains_list(text) == theirs(text)


def test_longest_is_alpaca_evals_rule_and_its_agreement_is_a_plain_count():
    import pandas as pd

    prompts, chosen, rejected = heldout_pairs()
    prompts, chosen, rejected = prompts + ["tie?"], chosen + ["same size"], rejected + ["size same"]
    result = judge_check("longest", prompts, chosen, rejected, floors=())
    rows = [r for r in result["annotations"] if r["annotator"] == "longest"]
    frame = pd.DataFrame(rows)
    assert list(frame["preference"]) == list(analyze._get_longest_predictor(frame)["preference"].astype(float))
    longer = sum(len(c) > len(r) for c, r in zip(chosen, rejected))
    equal = sum(len(c) == len(r) for c, r in zip(chosen, rejected))
    assert equal >= 1
    # both orders: a pair whose chosen is longer agrees twice, an equal-length pair once (the second shown wins)
    assert human_agreement(rows) == (2 * longer + equal) / (2 * len(prompts))
    assert result["annotators"]["longest"]["Human agreement"] == 100 * (2 * longer + equal) / (2 * len(prompts))


def test_random_floor_is_seeded_by_the_texts_and_fair():
    prompts, chosen, rejected = heldout_pairs()
    _, _, first, swapped = judge_orders("random", prompts, chosen, rejected)
    _, _, again, _ = judge_orders("random", prompts[::-1], chosen[::-1], rejected[::-1])
    assert again.judgments == first.judgments[::-1]  # the order of the pairs does not matter
    _, _, reseeded, _ = judge_orders("random", prompts, chosen, rejected, {"seed": 1})
    assert reseeded.judgments != first.judgments
    assert 70 <= first.judgments.count("a") + swapped.judgments.count("a") <= 130  # 200 fair coins


class CountingJudge:
    """A plugin judge that prefers the output with "good", reports tokens, and cannot judge "???"."""

    calls: list = []

    @hookimpl
    def register_judges(self):
        def judge(prompts, outputs_a, outputs_b, **params):
            type(self).calls.append(len(prompts))
            answers = []
            for a, b in zip(outputs_a, outputs_b):
                judgment = None if "???" in a + b else 0.9 if "good" in a else 0.1 if "good" in b else 0.5
                answers.append({"judgment": judgment, "prompt_tokens": 100, "completion_tokens": 1})
            return answers

        def failing(prompts, outputs_a, outputs_b, **params):
            raise RuntimeError("endpoint down")

        yield Judge(name="counting", fn=judge, params={"temperature": 0.0})
        yield Judge(name="failing", fn=failing)


@pytest.fixture
def counting(registered, tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_PLUGINS_CACHE", str(tmp_path / "cache"))
    CountingJudge.calls = []
    registered(CountingJudge(), "counting-judge")
    return tmp_path / "cache" / "judgments"


def test_answers_are_cached_by_judge_params_and_texts_and_failures_are_not(counting):
    prompts, policy, baseline = ["p1", "p2", "p3"], ["good", "meh", "???"], ["meh", "good", "meh"]
    metrics, rows = judge_both_orders("counting", prompts, policy, baseline)
    assert CountingJudge.calls == [3, 3] and metrics["judge_info"]["answers_from_cache"] == 0
    assert (metrics["wins"], metrics["losses"], metrics["n_null"]) == (1, 1, 1) and rows[2]["preference"] is None
    assert len(list(counting.rglob("*.json"))) == 4  # the two None answers left no entry
    again, _ = judge_both_orders("counting", prompts, policy, baseline)
    assert CountingJudge.calls == [3, 3, 1, 1]  # only the comparisons without an answer reach the judge
    assert again["judge_info"]["answers_from_cache"] == 4
    assert {k: v for k, v in again.items() if k != "judge_info"} == {k: v for k, v in metrics.items() if k != "judge_info"}
    judge_both_orders("counting", prompts, policy, baseline, {"temperature": 0.7})
    assert CountingJudge.calls[-2:] == [3, 3]  # other parameters, other answers
    judge_both_orders("counting", prompts, policy, baseline, cache=False)
    assert CountingJudge.calls[-2:] == [3, 3]
    with pytest.raises(DpoPluginsError, match="judge 'failing' .*RuntimeError: endpoint down"):
        judge_both_orders("failing", prompts, policy, baseline)
    assert len(list(counting.rglob("*.json"))) == 8


def test_a_win_rate_with_nothing_judged_has_no_rates_and_counts_the_nulls(counting):
    metrics, rows = judge_both_orders("counting", ["p1", "p2"], ["???", "x"], ["y", "??? z"])
    assert metrics["n_null"] == 2 and metrics["win_rate"] is None and metrics["win_rate_ci"] is None
    assert [row["outcome"] for row in rows] == [None, None]


def test_an_unreadable_cache_entry_is_judged_again_and_an_unwritable_cache_is_a_warning(counting, caplog):
    judge_both_orders("counting", ["p"], ["good"], ["meh"])
    for entry in counting.rglob("*.json"):
        entry.write_text("{not json")
    metrics, _ = judge_both_orders("counting", ["p"], ["good"], ["meh"])
    assert CountingJudge.calls == [1, 1, 1, 1] and metrics["wins"] == 1
    blocked = counting.parent / "blocked"
    blocked.write_text("a file where the cache folder should be")
    with caplog.at_level("WARNING", logger="dpo_plugins.judge_cache"):
        from dpo_plugins.evals import judge_cache

        store = judge_cache.JudgeCache(blocked / "judgments")
        store.store("ab" * 32, judge_cache.CachedAnswer("a", 0.1))
        store.store("cd" * 32, judge_cache.CachedAnswer("b", 0.1))
    assert caplog.text.count("is not writable") == 1 and store.load("ab" * 32) is None


def pairs_file(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in rows))
    return path


def test_judge_eval_cli_reports_alpaca_eval_columns_floors_price_and_a_report(counting, tmp_path, capsys):
    data = pairs_file(tmp_path / "pairs.jsonl", [("p1", "good answer, long enough to be longer by far than meh", "meh"),
                                                 ("p2", "good", "a much longer but worse answer, over thirty chars"),
                                                 ("p3", "??? unreadable", "fine")])
    report = tmp_path / "report"
    assert main(["judge-eval", "--data", str(data), "--judge", "counting", "--prompt-price", "2.5",
                 "--completion-price", "10", "--json", "--report", str(report)]) == 0
    printed = json.loads(capsys.readouterr().out)
    judge = printed["annotators"]["counting"]
    assert list(printed["annotators"]) == ["counting", "longest", "random"]
    assert judge["# parsed"] == 4 and judge["Human agreement"] == pytest.approx(90.0)
    assert judge["Price [$/1000 examples]"] == pytest.approx(1000 * (100 * 2.5 + 1 * 10) / 1e6)
    assert judge["Proba. prefer 1"] == pytest.approx(0.5) and judge["position consistency"] == 1.0
    assert printed["annotators"]["longest"]["Price [$/1000 examples]"] is None  # no token counts
    assert sorted(p.name for p in report.iterdir()) == [".dpo-plugins-output", "agreement.png", "annotations.json",
                                                        "metrics.json", "report.md"]
    annotations = json.loads((report / "annotations.json").read_text())
    assert len(annotations) == 18 and {"instruction", "output_1", "output_2", "preference", "human_preference",
                                       "annotator"} <= set(annotations[0])
    text = (report / "report.md").read_text()
    assert "longest (floor)" in text and "ONE human label" in text
    assert main(["judge-eval", "--data", str(data), "--judge", "counting"]) == 0  # the console table, from the cache
    table = capsys.readouterr().out
    assert "Human agreement [95% CI]" in table and "random (floor)" in table


def test_judge_eval_bad_input_is_one_line_each_before_any_judging(counting, tmp_path, capsys):
    data = pairs_file(tmp_path / "pairs.jsonl", [("p1", "", "meh"), ("p2", "ok", "   "), ("p3", "ok", "fine")])
    assert main(["judge-eval", "--data", str(data), "--judge", "counting"]) == 1
    err = capsys.readouterr().err
    assert "pair 1: $.chosen: empty answer" in err and "pair 2: $.rejected: empty answer" in err
    assert "Traceback" not in err and CountingJudge.calls == []
    assert main(["judge-eval", "--data", str(data), "--judge", "counting", "--prompt-price", "1"]) == 1
    assert "--prompt-price and --completion-price go together" in capsys.readouterr().err
    unreadable = pairs_file(tmp_path / "unreadable.jsonl", [("p1", "???", "meh"), ("p2", "ok", "??? too")])
    assert main(["judge-eval", "--data", str(unreadable), "--judge", "counting", "--json"]) == 0
    judge = json.loads(capsys.readouterr().out)["annotators"]["counting"]
    assert judge["# parsed"] == 0 and judge["Human agreement"] is None and judge["Human agreement 95% CI"] is None
    assert main(["judge-eval", "--data", str(unreadable), "--judge", "counting"]) == 0
    assert "n/a (nothing parsed)" in capsys.readouterr().out


@pytest.mark.parametrize("command", [
    ["judge-eval", "--data", "nonexistent.jsonl"],
    ["eval", "--model", "no-such-model", "--data", "nonexistent.jsonl", "--report", "out"],
])
def test_unknown_judge_params_are_refused_naming_what_the_judge_accepts(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--judge", "llm-pairwise", "--judge-param", "modle=smollm2",
                 "--judge-param", "mode=logprob"]) == 1
    err = capsys.readouterr().err
    assert "judge 'llm-pairwise' (dpo_plugins.default_plugins.judges" in err
    assert "has no parameter 'modle'; it accepts: mode, model, tie_margin" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_llm_pairwise_judge_eval_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    data = pairs_file(tmp_path / "pairs.jsonl", [("Capital of France?", "Paris.", "Lyon, I believe."),
                                                 ("2+2?", "4", "5")])
    assert main(["judge-eval", "--data", str(data), "--judge", "llm-pairwise", "--judge-param",
                 f"model={tiny_model_dir}", "--json", "--no-judge-cache"]) == 0
    judge = json.loads(capsys.readouterr().out)["annotators"]["llm-pairwise"]
    assert judge["# parsed"] == 4 and 0 <= judge["Human agreement"] <= 100 and judge["answers from cache"] == 0
    assert judge["Time [seconds/1000 examples]"] > 0
