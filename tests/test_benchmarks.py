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
