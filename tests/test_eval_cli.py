"""`dpo eval` end to end on tiny models: the report files, their numbers, and the guards."""

from __future__ import annotations

import json

import pytest

from conftest import build_tiny_model
from dpo_plugins.adapters.tokenization import tokenize_pair
from dpo_plugins.evals.reward_accuracy import score_pairs

ROWS = [
    {"prompt": [{"role": "user", "content": "What color is the sky?"}],
     "chosen": [{"role": "assistant", "content": "Blue."}], "rejected": [{"role": "assistant", "content": "Green."}]},
    {"prompt": [{"role": "user", "content": "2+2?"}],
     "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5, I think"}]},
    {"prompt": [{"role": "user", "content": "Name a fruit."}],
     "chosen": [{"role": "assistant", "content": "Apple."}], "rejected": [{"role": "assistant", "content": "Carburettor."}]},
    {"prompt": [{"role": "user", "content": "Name a fruit."}],
     "chosen": [{"role": "assistant", "content": "Pear."}], "rejected": [{"role": "assistant", "content": "Brick."}]},
]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    paths = {}
    for name, seed in (("policy", 1), ("ref", 0)):
        path = tmp_path_factory.mktemp(name)
        build_tiny_model(tokenizer, seed=seed).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths[name] = path
    return paths


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def test_eval_writes_the_report_with_exact_numbers(run_dpo, models, data, tmp_path, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    report = tmp_path / "report"
    result = run_dpo("eval", "--model", models["policy"], "--ref", models["ref"], "--data", data, "--report", report,
                     "--judge", "exact-match", "--max-new-tokens", "3", "--no-progress")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((report / "metrics.json").read_text())
    for key in ("n_pairs", "reward_accuracy", "reward_ties", "mean_margin", "wins", "losses", "ties", "win_rate",
                "win_rate_ci", "lc_win_rate", "judge", "avg_len_policy", "avg_len_baseline"):
        assert key in metrics, key
    assert metrics["n_pairs"] == 4 and metrics["judge"] == "exact-match"
    assert metrics["wins"] + metrics["losses"] + metrics["ties"] == 3  # distinct prompts
    assert metrics["lc_win_rate"] is None and "fewer than 20" in metrics["lc_win_rate_note"]
    lines = pair_lines(report)
    assert len(lines) == 4

    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # noqa: E731
    expected = score_pairs(load(models["policy"]), [tokenize_pair(r, tokenizer) for r in ROWS],
                           reference=load(models["ref"]))
    assert [line["chosen_logratio"] for line in lines] == pytest.approx(expected.chosen_logratios, abs=1e-5)
    assert [line["rejected_logratio"] for line in lines] == pytest.approx(expected.rejected_logratios, abs=1e-5)
    correct = sum(c > r for c, r in zip(expected.chosen_logratios, expected.rejected_logratios))
    assert metrics["reward_accuracy"] == correct / 4
    assert (report / "report.md").read_text().startswith("# dpo eval report")
    for png in ("margin_histogram.png", "win_rate.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    generations = [json.loads(line) for line in (report / "generations.jsonl").read_text().splitlines()]
    assert {g["outcome"] for g in generations} <= {"win", "loss", "tie"} and len(generations) == 3


def dpo(capsys, *args):
    """``dpo ARGS`` in-process (fast): ``(exit code, stderr)``."""
    from dpo_plugins.cli import main

    code = main([str(arg) for arg in args])
    return code, capsys.readouterr().err


def pair_lines(report):
    return [json.loads(line) for line in (report / "pairs.jsonl").read_text().splitlines()]


def test_the_reference_is_read_from_the_cache_and_both_forwards_agree(run_dpo, models, data, tmp_path):
    env = {"DPO_PLUGINS_CACHE": str(tmp_path / "cache")}
    args = ["eval", "--model", models["policy"], "--ref", models["ref"], "--data", data, "--no-progress", "--report"]
    runs = {name: run_dpo(*args, tmp_path / name, *extra, env=env) for name, extra in (
        ("first", []), ("cached", []), ("plain", ["--forward", "plain", "--no-ref-cache"]))}
    for result in runs.values():
        assert result.returncode == 0, result.stderr
    assert "reference log-probs: computed and cached" in runs["first"].stderr
    assert "reference log-probs: read from the cache" in runs["cached"].stderr
    assert "reference log-probs:" not in runs["plain"].stderr
    assert len(list((tmp_path / "cache" / "ref-logps").iterdir())) == 1
    assert (tmp_path / "cached" / "pairs.jsonl").read_bytes() == (tmp_path / "first" / "pairs.jsonl").read_bytes()
    packed, plain = pair_lines(tmp_path / "first"), pair_lines(tmp_path / "plain")
    for side in ("chosen_logratio", "rejected_logratio", "chosen_logps", "rejected_logps"):
        assert [line[side] for line in packed] == pytest.approx([line[side] for line in plain], abs=1e-6, rel=0)
    assert [line["correct"] for line in packed] == [line["correct"] for line in plain]


def test_dpo_eval_reads_the_reference_that_dpo_train_cached(run_dpo, models, data, tmp_path):
    env = {"DPO_PLUGINS_CACHE": str(tmp_path / "cache")}
    held_out = tmp_path / "held-out.jsonl"
    held_out.write_text("".join(json.dumps(row) + "\n" for row in ROWS[1:]))
    trained = run_dpo("train", "--model", models["ref"], "--data", data, "--eval-data", held_out, "--output-dir",
                      tmp_path / "out", "--max-steps", "1", "--per-device-train-batch-size", "2", "--save-strategy",
                      "no", "--learning-rate", "1e-2", "--disable-tqdm", "true", env=env)
    assert trained.returncode == 0, trained.stderr
    assert "reference log-probs for eval: computed and cached" in trained.stderr
    scored = run_dpo("eval", "--model", tmp_path / "out", "--ref", models["ref"], "--data", held_out, "--no-progress",
                     "--report", tmp_path / "report", env=env)
    assert scored.returncode == 0, scored.stderr
    assert "reference log-probs: read from the cache" in scored.stderr


def test_bad_data_lists_every_problem_and_writes_nothing(capsys, models, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n{not json\n" + json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    report = tmp_path / "report"
    code, err = dpo(capsys, "eval", "--model", models["policy"], "--ref", models["ref"], "--data", data, "--report", report)
    assert code == 1
    assert f"{data}:2: $: invalid JSON" in err and f"{data}:3: rejected: missing" in err
    assert not report.exists()


def test_the_judge_check_can_take_the_first_pairs_only(capsys, models, data, tmp_path):
    report = tmp_path / "report"
    code, err = dpo(capsys, "eval", "--model", models["policy"], "--ref", models["ref"], "--data", data, "--report",
                    report, "--judge-check-max-pairs", "2")
    assert code == 1 and "--judge-check-max-pairs needs --judge-check" in err and not report.exists()
    code, err = dpo(capsys, "eval", "--model", models["policy"], "--ref", models["ref"], "--data", data, "--report",
                    report, "--judge", "longest", "--max-new-tokens", "2", "--no-progress", "--judge-check", data,
                    "--judge-check-max-pairs", "2")
    assert code == 0, err
    check = json.loads((report / "metrics.json").read_text())["judge_check"]
    longer = [len(row["chosen"][0]["content"]) > len(row["rejected"][0]["content"]) for row in ROWS[:2]]
    assert check["n_pairs"] == 2 and check["annotators"]["longest"]["Human agreement"] == 100 * sum(longer) / 2


def test_policy_as_its_own_reference_is_refused(capsys, models, data, tmp_path):
    report = tmp_path / "report"
    code, err = dpo(capsys, "eval", "--model", models["policy"], "--ref", models["policy"], "--data", data, "--report", report)
    assert code == 1 and "allow-self-reference" in err and not report.exists()


def test_outputs_with_missing_or_duplicated_prompts_are_errors(capsys, models, data, tmp_path):
    policy = tmp_path / "policy.jsonl"
    baseline = tmp_path / "baseline.jsonl"
    policy.write_text("".join(json.dumps({"prompt": p, "output": "o"}) + "\n" for p in ("a", "b", "a", "c")))
    baseline.write_text("".join(json.dumps({"prompt": p, "output": "o"}) + "\n" for p in ("a", "b", "d")))
    report = tmp_path / "report"
    code, err = dpo(capsys, "eval", "--model", models["policy"], "--ref", models["ref"], "--data", data,
                    "--report", report, "--judge", "exact-match", "--policy-outputs", policy, "--baseline-outputs", baseline,
                    "--no-progress")
    assert code == 1, err
    assert f"{policy}:3: $.prompt: duplicate prompt (first at {policy}:1)" in err
    assert f"{policy}:4: $.prompt: prompt missing from the {baseline}" in err
    assert f"{baseline}:3: $.prompt: prompt missing from the {policy}" in err
    assert not report.exists()


def test_a_peft_adapter_is_scored_against_its_base_by_default(capsys, models, data, tmp_path, tokenizer):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(models["ref"], dtype=torch.float32)
    adapter = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    report = tmp_path / "report"
    code, err = dpo(capsys, "eval", "--model", tmp_path / "adapter", "--data", data, "--report", report, "--no-progress")
    assert code == 0, err
    assert "its base model" in err
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["reward_mode"] == "dpo" and metrics["ref"] == str(models["ref"])
    adapter.eval()
    expected = score_pairs(adapter, [tokenize_pair(r, tokenizer) for r in ROWS],
                           reference=AutoModelForCausalLM.from_pretrained(models["ref"], dtype=torch.float32).eval())
    lines = [json.loads(line) for line in (report / "pairs.jsonl").read_text().splitlines()]
    assert [line["chosen_logratio"] for line in lines] == pytest.approx(expected.chosen_logratios, abs=1e-5)
    assert all(abs(x) > 1e-6 for x in expected.chosen_logratios)  # the adapter changed the model
