"""AlpacaEval's numbers equal AlpacaEval's own functions (alpaca_eval, the test extra) on the same input.

``tests/data/alpaca_eval/annotations.json`` has the shape of a real
weighted_alpaca_eval_gpt4_turbo annotations.json: continuous preferences,
the 1.0 / 2.0 extremes, exact draws, AlpacaEval's legacy draw 0 and a null
(failed) annotation. The length-controlled GLMs read AlpacaEval's hub tables
(df_gamed.csv); the tests generate such tables and hand AlpacaEval the file
in place of its hub download.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from alpaca_eval.metrics import get_winrate
from alpaca_eval.metrics import glm_winrate as glm

from dpo_plugins.cli import main
from dpo_plugins.errors import DpoPluginsError
from dpo_plugins.evals.annotations import read_judgments, write_alpaca_eval
from dpo_plugins.evals.length_control import MINIMAL, NOREG, V1, length_controlled, read_difficulty_table
from dpo_plugins.evals.preferences import head_to_head

FIXTURE = Path(__file__).parent / "data" / "alpaca_eval" / "annotations.json"
logging.getLogger().setLevel(logging.WARNING)  # AlpacaEval logs every dropped null at INFO


def annotations() -> list[dict]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def random_annotations(seed: int, n: int = 120, discrete: bool = False) -> list[dict]:
    """A judge that likes length: longer model outputs win more often."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        base, model = int(rng.integers(20, 400)), int(rng.integers(10, 700))
        p = 1 / (1 + np.exp(-(0.3 + (model - base) / 200 + rng.normal(0, 0.7))))
        preference = float(round(1 + p)) if discrete else float(1 + p)
        if i % 17 == 3:
            preference = None
        elif i % 13 == 5:
            preference = 1.5
        rows.append({"instruction": f"instruction {i}", "output_1": "b" * base, "output_2": "m" * model,
                     "generator_1": "baseline", "generator_2": "model", "annotator": "fixture",
                     "preference": preference})
    return rows


def gamed_table(path: Path, n: int, seed: int = 1) -> Path:
    """A df_gamed.csv in AlpacaEval's layout: two gamed baselines, one row per instruction each, model first."""
    import numpy as np

    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 1, n)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "index", "preference", "std_delta_len", "instruction_difficulty",
                         "not_gamed_baseline"])
        for model, sign in (("gpt4_1106_preview_concise", -1), ("gpt4_1106_preview_verbose", 1)):
            for i in range(n):
                preference = "" if (i == 7 and sign > 0) else repr(float(np.clip(0.5 + 0.25 * sign + rng.normal(0, 0.15), 0, 1)))
                writer.writerow([model, i, preference, repr(float(sign * rng.uniform(0, 2))), repr(float(difficulty[i])),
                                 False])
    return path


def difficulty_table(path: Path, gamed: Path) -> Path:
    """AlpacaEval's instruction_difficulty.csv (index, difficulty) with the difficulties of ``gamed``."""
    table = read_difficulty_table(gamed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", "instruction_difficulty"])
        for index, value in sorted(table.difficulty.items()):
            writer.writerow([index, repr(value)])
    return path


def alpaca_lc(rows, glm_name, gamed: Path | None, monkeypatch) -> dict:
    if gamed is not None:  # AlpacaEval downloads df_gamed.csv from the hub: hand it the fixture table instead
        monkeypatch.setattr(glm, "hf_hub_download", lambda **kwargs: str(gamed))
    return glm.get_length_controlled_winrate(rows, glm_name=glm_name, save_weights_dir=None)


def ours(rows, table=None):
    from dpo_plugins.evals.stats import alpaca_eval_metrics

    return alpaca_eval_metrics([r["preference"] for r in rows], [len(r["output_2"]) for r in rows],
                               [len(r["output_1"]) for r in rows], table)


def test_the_fixture_has_every_kind_of_preference():
    preferences = [row["preference"] for row in annotations()]
    assert None in preferences and 1.5 in preferences and 0.0 in preferences
    assert 1.0 in preferences and 2.0 in preferences
    assert any(p not in (None, 0.0, 1.0, 1.5, 2.0) for p in preferences)


@pytest.mark.parametrize("rows", [annotations(), random_annotations(0), random_annotations(1, discrete=True),
                                  random_annotations(2, n=7)], ids=["fixture", "continuous", "discrete", "few"])
def test_head_to_head_equals_alpaca_eval_exactly(rows):
    theirs = get_winrate(rows)
    mine = head_to_head([row["preference"] for row in rows])
    for key in ("n_total", "n_wins", "n_wins_base", "n_draws"):
        assert mine[key] == theirs[key], key
    for key in ("win_rate", "standard_error", "discrete_win_rate"):
        assert mine[key] * 100 == theirs[key], key  # AlpacaEval reports percentages
    assert mine["n_null"] == sum(row["preference"] is None for row in rows)


def test_fixture_counts_by_hand():
    mine = head_to_head([row["preference"] for row in annotations()])
    assert mine["n_null"] == 1 and mine["n_total"] == 29
    assert mine["n_draws"] == 3  # two 1.5s and the legacy 0


@pytest.mark.parametrize("seed", [0, 3])
def test_length_controlled_v1_equals_alpaca_eval_with_the_gamed_table(seed, tmp_path, monkeypatch):
    rows = random_annotations(seed)
    gamed = gamed_table(tmp_path / "df_gamed.csv", len(rows), seed)
    theirs = alpaca_lc(rows, V1, gamed, monkeypatch)
    mine = ours(rows, read_difficulty_table(gamed))
    assert mine["lc_method"] == V1
    assert mine["lc_win_rate"] * 100 == pytest.approx(theirs["length_controlled_winrate"], abs=1e-6)
    assert mine["lc_standard_error"] * 100 == pytest.approx(theirs["lc_standard_error"], abs=1e-6)
    assert abs(mine["lc_win_rate"] - mine["win_rate"]) > 0.01  # length control changed something


def test_noreg_from_instruction_difficulty_csv_equals_alpaca_eval(tmp_path, monkeypatch):
    rows = random_annotations(4)
    gamed = gamed_table(tmp_path / "df_gamed.csv", len(rows), 4)
    table = read_difficulty_table(difficulty_table(tmp_path / "instruction_difficulty.csv", gamed))
    assert not table.gamed
    theirs = alpaca_lc(rows, NOREG, gamed, monkeypatch)
    mine = ours(rows, table)
    assert mine["lc_method"] == NOREG
    assert mine["lc_win_rate"] * 100 == pytest.approx(theirs["length_controlled_winrate"], abs=1e-6)


@pytest.mark.parametrize("rows", [random_annotations(5), annotations()], ids=["random", "fixture"])
def test_without_a_table_the_minimal_glm_equals_alpaca_evals_of_that_name(rows, tmp_path, monkeypatch):
    gamed = gamed_table(tmp_path / "df_gamed.csv", len(rows))  # AlpacaEval reads it even when unused
    theirs = alpaca_lc(rows, MINIMAL, gamed, monkeypatch)
    mine = ours(rows)
    assert mine["lc_method"] == MINIMAL != V1
    assert mine["lc_win_rate"] * 100 == pytest.approx(theirs["length_controlled_winrate"], abs=1e-6)


def test_no_lc_when_it_means_nothing():
    few = ours(random_annotations(6, n=12))
    assert few["lc_win_rate"] is None and few["lc_method"] is None and "fewer than 20" in few["lc_win_rate_note"]
    same = length_controlled([1.2, 1.7] * 15, [50] * 30, [40] * 30)
    assert same.value is None and "same length difference" in same.note


def test_a_table_that_does_not_cover_the_judgments_is_an_error(tmp_path):
    gamed = read_difficulty_table(gamed_table(tmp_path / "df_gamed.csv", 30))
    with pytest.raises(DpoPluginsError, match="no instruction difficulty for instruction index 30"):
        ours(random_annotations(0, n=40), gamed)


def test_bad_difficulty_tables_list_every_line(tmp_path):
    bad = tmp_path / "df_gamed.csv"
    bad.write_text("model,index,preference,std_delta_len,instruction_difficulty,not_gamed_baseline\n"
                   "m,0,0.4,0.1,0.3,False\nm,x,0.4,0.1,0.3,False\nm,2,0.4,oops,0.3,False\nm,3,0.4\n")
    with pytest.raises(DpoPluginsError) as error:
        read_difficulty_table(bad)
    assert str(error.value).splitlines() == [
        f"{bad}:3: index: not a whole number: 'x'",
        f"{bad}:4: std_delta_len: not a number: 'oops'",
        f"{bad}:5: $: 3 columns, the header has 6",
    ]


def test_winrate_command_json_contract(capsys):
    assert main(["winrate", str(FIXTURE), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    theirs = get_winrate(annotations())
    assert set(printed) >= {"n_total", "n_wins", "n_wins_base", "n_draws", "win_rate", "standard_error",
                            "discrete_win_rate", "lc_win_rate", "lc_method", "n_null"}
    assert printed["win_rate"] * 100 == theirs["win_rate"] and printed["n_null"] == 1
    assert printed["lc_method"] == MINIMAL and printed["lc_win_rate"] is not None


def test_winrate_command_prints_a_table_without_json(capsys):
    assert main(["winrate", str(FIXTURE)]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    theirs = get_winrate(annotations())
    assert lines["win_rate"] == f"{theirs['win_rate']:.2f}%" and lines["n_null"] == "1"
    assert lines["lc_method"] == MINIMAL


def test_winrate_command_with_the_gamed_table(tmp_path, capsys, monkeypatch):
    rows = random_annotations(7)
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(rows))
    gamed = gamed_table(tmp_path / "df_gamed.csv", len(rows), 7)
    assert main(["winrate", str(path), "--json", "--instruction-difficulty", str(gamed)]) == 0
    printed = json.loads(capsys.readouterr().out)
    theirs = alpaca_lc(rows, V1, gamed, monkeypatch)
    assert printed["lc_method"] == V1
    assert printed["lc_win_rate"] * 100 == pytest.approx(theirs["length_controlled_winrate"], abs=1e-6)


def test_winrate_command_lists_every_bad_row(tmp_path, capsys):
    rows = annotations()[:4]
    rows[0]["preference"] = 2.5
    rows[1]["preference"] = "B"
    del rows[2]["output_2"]
    rows[3]["generator_1"] = 7
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(rows, indent=2))
    assert main(["winrate", str(path), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.splitlines()[1:] == [
        f"{path}:2: $.preference: \"B\" is not a preference: expected a number in [1, 2] (1 the baseline wins, "
        "2 the model, 1.5 a draw), 0 (a draw) or null",
        f"{path}:3: $.output_2: missing or not a string",
        f"{path}:4: $.generator_1: not a string",
    ]
    assert captured.err.splitlines()[0].startswith(f"dpo winrate: error: {path}:1: $.preference: 2.5 is not")


def test_several_models_in_one_file_is_an_error(tmp_path):
    rows = annotations()
    rows[5]["generator_2"] = "another-model"
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(DpoPluginsError, match="several models"):
        read_judgments(path)


def test_dpo_eval_judgments_and_the_export_read_back_the_same(tmp_path):
    rows = annotations()
    generations = tmp_path / "generations.jsonl"
    with open(generations, "w") as handle:
        for row in rows:
            handle.write(json.dumps({"prompt": row["instruction"], "policy_output": row["output_2"],
                                     "baseline_output": row["output_1"], "preference": row["preference"]}) + "\n")
        handle.write(json.dumps({"prompt": "old file", "policy_output": "x", "baseline_output": "y",
                                 "outcome": "win"}) + "\n")
    from_eval = read_judgments(generations)
    assert [j.preference for j in from_eval] == [row["preference"] for row in rows] + [2.0]
    write_alpaca_eval(tmp_path / "export", [j.instruction for j in from_eval], [j.output_2 for j in from_eval],
                      [j.output_1 for j in from_eval], [j.preference for j in from_eval], "policy", "baseline", "judge")
    exported = json.loads((tmp_path / "export" / "annotations.json").read_text())
    assert get_winrate(exported)["win_rate"] == head_to_head([j.preference for j in from_eval])["win_rate"] * 100
    outputs = json.loads((tmp_path / "export" / "model_outputs.json").read_text())
    assert outputs[0] == {"dataset": "dpo-plugins", "instruction": rows[0]["instruction"], "output": rows[0]["output_2"],
                          "generator": "policy"}
