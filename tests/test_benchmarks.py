"""The benchmark scripts still run (one tiny round each), and what they compare agrees.

The timings themselves are not tested here: see docs/benchmarks.md.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_benchmark(monkeypatch, capsys):
    """``run_benchmark(module, *args)``: the script's ``main`` in this process; its JSON result."""
    monkeypatch.syspath_prepend(str(ROOT))

    def run(module, *args):
        assert importlib.import_module(module).main([*map(str, args), "--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    return run


def test_train_benchmark_packed_losses_equal_stock_trl(run_benchmark, tiny_model_dir):
    common = ["--model", tiny_model_dir, "--pairs", 8, "--rounds", 2, "--steps-per-round", 1, "--batch-size", 4]
    result = run_benchmark("benchmarks.train_throughput", *common, "--learning-rate", 1e-2)
    assert [row["name"] for row in result["rows"]] == ["stock TRL DPOTrainer", "dpo-plugins (packed)"]
    assert len(result["losses"]["stock"]) == 2
    # a high learning rate: the second step's loss depends on the first update, which must agree too
    assert result["losses"]["stock"][0] != result["losses"]["stock"][1]
    assert result["max_loss_diff"] < 1e-5


def test_loss_benchmark_measures_the_variants_it_names(run_benchmark, tiny_model_dir):
    """Each timed run trains with what its name says: at step 1 the policy is the reference (log-ratios 0)."""
    import math

    result = run_benchmark("benchmarks.train_throughput", "--model", tiny_model_dir, "--pairs", 8, "--rounds", 2,
                           "--steps-per-round", 1, "--batch-size", 4, "--losses")
    assert [row["name"] for row in result["rows"]] == ["sigmoid", "sigmoid+sft", "sigmoid, WPO", "sigmoid, LD-DPO 0.5"]
    first = {name: losses[0] for name, losses in result["losses"].items()}
    assert first["sigmoid"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["sigmoid, LD-DPO 0.5"] == pytest.approx(math.log(2), abs=1e-6)  # LD-DPO reweights a zero ratio
    assert first["sigmoid+sft"] > first["sigmoid"] + 1  # plus the chosen tokens' NLL (~ln of the vocabulary)
    # ln 2 times the pair weights w_w * w_l, w = exp(mean(log p(y_t) - log sum_v p(v)^2)): near 1, never exactly
    assert abs(first["sigmoid, WPO"] - first["sigmoid"]) > 1e-5


def test_ref_cache_benchmark_trains_alike_with_and_without_the_cache(run_benchmark, tiny_model_dir):
    result = run_benchmark("benchmarks.train_throughput", "--model", tiny_model_dir, "--rounds", 2, "--steps-per-round", 2,
                           "--batch-size", 4, "--learning-rate", 1e-2, "--ref-cache")
    assert [row["name"] for row in result["rows"]] == ["reference in every step", "first run (computes ref)", "rerun (cached ref)"]
    assert result["max_loss_diff"] < 1e-5  # the precomputed reference trains like the per-step one
    assert result["reruns_read_the_cache"] is True


def test_eval_benchmark_agrees_with_the_plain_evaluation(run_benchmark, tiny_model_dir):
    result = run_benchmark("benchmarks.eval_throughput", "--model", tiny_model_dir, "--pairs", 6, "--rounds", 1, "--batch-size", 4)
    assert len(result["rows"]) == 3
    assert max(result["max_reward_diff"].values()) < 1e-3


def test_gpu_check_runs_on_cpu_with_a_tiny_model(run_benchmark):
    """benchmarks/gpu_check.py's CPU mode: every field docs/benchmarks.md documents, from a real run of both trainers."""
    result = run_benchmark("benchmarks.gpu_check", "--device", "cpu", "--tiny", "--pairs", 4, "--batch-size", 2,
                           "--steps", 1)
    assert (result["device"], result["dtype"], result["loss_tolerance"]) == ("cpu", "bf16", 0.05)
    [(name, entry)] = result["models"].items()
    assert name == "tiny" and entry["attn_implementation"] == "sdpa" and entry["packed_forward_ran"] is True
    assert entry["losses_within_tolerance"] and len(entry["losses"]["stock"]) == len(entry["losses"]["packed"]) == 1
    assert entry["speed_ratio"] > 0 and set(entry["tokens_per_s"]) == {"stock", "packed"}
    assert entry["peak_gib"] == {"stock": None, "packed": None} and entry["mfu_estimate"] is None  # CPU: not measured
    assert sorted(entry["long_pairs"], key=int) == ["256", "1024"]
    for long in entry["long_pairs"].values():
        assert long["packed_forward_ran"] and long["losses_within_tolerance"]
    assert entry["prefix_masks"]["agree"] is True and entry["prefix_masks"]["device"] == "cpu"


def test_demo_sweep_scores_each_checkpoint_on_the_held_out_pairs(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import demo_sweep
    from dpo_plugins.evals.stats import wilson_interval

    results = tmp_path / "results.jsonl"
    assert demo_sweep.main(["--model", str(tiny_model_dir), "--run", "full:lr=1e-3,steps=2,batch=2,max_length=192",
                            "--heldout", "6", "--save-every", "1", "--threads", "1", "--work", str(tmp_path), "--judge-prompts", "2",
                            "--results", str(results)]) == 0
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [row["at_step"] for row in rows] == [1, 2]
    heldout = (tmp_path / "heldout.jsonl").read_text().splitlines()
    train = (tmp_path / "train.jsonl").read_text().splitlines()
    assert len(heldout) == 6 and len(train) == 393 and not set(heldout) & set(train)
    for row in rows:
        own = json.loads((tmp_path / "full-lr0.001-b0.1-L192-s2" / f"eval-{row['at_step']}" / "metrics.json").read_text())
        assert own["reward_mode"] == "dpo" and row["accuracy"] == own["reward_accuracy"]
        correct = round(own["reward_accuracy"] * own["n_pairs"])
        assert row["wilson_95"] == wilson_interval(correct, own["n_pairs"] - correct, 0)
        assert row["judge"]["wins"] + row["judge"]["ties"] + row["judge"]["losses"] == 2
        assert row["judge"]["first_position_rate"] == own["first_position_rate"]


def test_alpaca_eval_judge_benchmark_counts_agreement_and_the_floor(run_benchmark, tiny_model_dir):
    from dpo_plugins.workflows.convert import read_trl_rows

    result = run_benchmark("benchmarks.alpaca_eval_judge_hh", "--pairs", 3, "--local-model", tiny_model_dir)
    rows = read_trl_rows(str(ROOT / "dpo_plugins" / "data" / "demo" / "hh-harmless-azure.jsonl"), None)[-3:]
    longer = [len(r["chosen"][-1]["content"]) > len(r["rejected"][-1]["content"]) for r in rows]
    assert result["longest_floor"] == sum(longer) / 3
    assert result["judge_calls"] == 6 and result["human_agreement"] in (0, 1 / 6, 1 / 3, 0.5, 2 / 3, 5 / 6, 1)


def test_iterate_generation_benchmark_makes_as_many_samples_both_ways(run_benchmark, tiny_model_dir):
    result = run_benchmark("benchmarks.iterate_generation", "--model", tiny_model_dir, "--prompts", 3, "--k", 2,
                           "--max-new-tokens", 4, "--batch-size", 2)
    for side in ("plain", "batched"):
        assert 6 <= result[side]["tokens"] <= 3 * 2 * 4  # at least one token per sample, at most the cap
    assert result["ratio_tokens_per_s"] > 0
