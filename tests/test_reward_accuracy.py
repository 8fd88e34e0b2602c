"""Reward accuracy: per-pair log-ratios against an independent computation, and against TRL."""

from __future__ import annotations

import math

import pytest

from conftest import build_tiny_model
from dpo_plugins.adapters.tokenization import prompt_dropped, tokenize_pair
from dpo_plugins.errors import DpoPluginsError
from dpo_plugins.evals.logps import FORWARDS, pair_logps
from dpo_plugins.errors import SelfReferenceError
from dpo_plugins.evals.reward_accuracy import reward_metrics, score_pairs
from hh_test_rows import hh_rows

ROWS = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green, and the grass is also green."},
    {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
    {"prompt": "Name a fruit:", "chosen": " apple", "rejected": " a carburettor"},
    {"prompt": "Translate 'chat' to English:", "chosen": " cat", "rejected": " dog, probably"},
    {"prompt": "Say nothing.", "chosen": "", "rejected": " Something!"},
]


def straightforward_logps(model, prompt_ids, completion_ids, max_length=None, truncation_mode="keep_start"):
    """One unpadded sequence, one full forward, plain log_softmax: the obvious way."""
    import torch

    ids = list(prompt_ids) + list(completion_ids)
    is_completion = [False] * len(prompt_ids) + [True] * len(completion_ids)
    if max_length is not None and len(ids) > max_length:
        keep = slice(0, max_length) if truncation_mode == "keep_start" else slice(len(ids) - max_length, len(ids))
        ids, is_completion = ids[keep], is_completion[keep]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    return sum(log_probs[t - 1, ids[t]].item() for t in range(1, len(ids)) if is_completion[t])


def straightforward_logratios(policy, reference, pairs, **truncation):
    result = []
    for pair in pairs:
        result.append(tuple(
            straightforward_logps(policy, pair["prompt_ids"], pair[key], **truncation)
            - straightforward_logps(reference, pair["prompt_ids"], pair[key], **truncation)
            for key in ("chosen_ids", "rejected_ids")
        ))
    return result


@pytest.fixture(scope="module")
def tiny_pair(tokenizer):
    return build_tiny_model(tokenizer, seed=1).eval(), build_tiny_model(tokenizer, seed=0).eval()


@pytest.mark.parametrize("truncation", [{}, {"max_length": 9, "truncation_mode": "keep_start"},
                                        {"max_length": 7, "truncation_mode": "keep_end"},
                                        {"max_length": 64, "truncation_mode": "keep_start"}],
                         ids=["untruncated", "keep_start", "keep_end", "hh-64"])
@pytest.mark.parametrize("forward", FORWARDS)
def test_logratios_equal_straightforward_computation(tokenizer, tiny_pair, truncation, forward):
    policy, reference = tiny_pair
    pairs = [tokenize_pair(row, tokenizer) for row in ROWS + hh_rows(1)]
    pairs = [p for p in pairs if not prompt_dropped(p, truncation.get("max_length"), truncation.get("truncation_mode", "keep_start"))]
    scores = score_pairs(policy, pairs, reference=reference, batch_size=3, forward=forward, **truncation)
    expected = straightforward_logratios(policy, reference, pairs, **truncation)
    for got_chosen, got_rejected, (want_chosen, want_rejected) in zip(
        scores.chosen_logratios, scores.rejected_logratios, expected
    ):
        assert got_chosen == pytest.approx(want_chosen, abs=1e-5)
        assert got_rejected == pytest.approx(want_rejected, abs=1e-5)
    metrics = reward_metrics(scores.chosen_scores, scores.rejected_scores)
    want_correct = sum(c > r for c, r in expected)
    assert metrics["n_pairs"] == len(pairs) and metrics["reward_accuracy"] == want_correct / len(pairs)
    assert 0 < want_correct < len(pairs)  # the comparison is not trivially all-right or all-wrong


@pytest.mark.parametrize("forward", FORWARDS)
def test_batching_and_sorting_do_not_change_results(tokenizer, tiny_pair, forward):
    policy, _ = tiny_pair
    pairs = [tokenize_pair(row, tokenizer) for row in ROWS]
    one, many = pair_logps(policy, pairs, batch_size=1, forward=forward), pair_logps(policy, pairs, batch_size=16, forward=forward)
    for field in ("chosen_logps", "rejected_logps"):
        assert getattr(one, field).tolist() == pytest.approx(getattr(many, field).tolist(), abs=1e-5)
    assert many.chosen_lengths.tolist() == [float(len(p["chosen_ids"])) for p in pairs]


@pytest.mark.parametrize("forward", FORWARDS)
def test_no_pairs_give_empty_results(tiny_pair, forward):
    empty = pair_logps(tiny_pair[0], [], forward=forward)
    assert [tuple(t.shape) for t in (empty.chosen_logps, empty.rejected_logps, empty.chosen_lengths)] == [(0,), (0,), (0,)]


def test_a_model_the_packed_forward_cannot_serve_is_scored_the_plain_way(tokenizer, caplog):
    import logging

    model = build_tiny_model(tokenizer, seed=2).eval()
    model.config.final_logit_softcapping = 30.0  # ignored by Llama's own forward, refused by the packed head
    pairs = [tokenize_pair(row, tokenizer) for row in ROWS]
    with caplog.at_level(logging.INFO, logger="dpo_plugins.eval"):
        scored = pair_logps(model, pairs)
    assert "final_logit_softcapping=30.0" in caplog.text and "scoring the plain way" in caplog.text
    assert scored.chosen_logps.tolist() == pair_logps(model, pairs, forward="plain").chosen_logps.tolist()
    with pytest.raises(DpoPluginsError, match="forward 'fast': expected one of packed, plain"):
        pair_logps(model, pairs, forward="fast")


@pytest.mark.parametrize("forward", FORWARDS)
def test_reference_free_modes(tokenizer, tiny_pair, forward):
    policy, _ = tiny_pair
    pairs = [tokenize_pair(row, tokenizer) for row in ROWS]
    total = score_pairs(policy, pairs, mode="ref-free-sum", forward=forward)
    mean = score_pairs(policy, pairs, mode="ref-free-mean", forward=forward)
    for pair, chosen_sum, chosen_mean in zip(pairs, total.chosen_scores, mean.chosen_scores):
        want = straightforward_logps(policy, pair["prompt_ids"], pair["chosen_ids"])
        assert chosen_sum == pytest.approx(want, abs=1e-5)
        assert chosen_mean == pytest.approx(want / len(pair["chosen_ids"]), abs=1e-6)
    assert total.chosen_logratios == [] and all(row["chosen_logratio"] is None for row in total.rows())


def test_ties_count_as_wrong_and_nan_is_never_a_number():
    metrics = reward_metrics([1.0, 0.5, 2.0, float("nan"), None], [0.0, 0.5, 3.0, 1.0, 1.0])
    assert metrics == {"n_pairs": 5, "reward_accuracy": 0.2, "reward_ties": 1, "mean_margin": 0.0,
                       "n_undefined_scores": 2}
    assert reward_metrics([], [])["reward_accuracy"] is None
    assert reward_metrics([float("nan")], [1.0])["mean_margin"] is None


def test_policy_against_itself_is_refused_unless_allowed(tokenizer, tiny_pair):
    policy, _ = tiny_pair
    pairs = [tokenize_pair(row, tokenizer) for row in ROWS[:2]]
    with pytest.raises(SelfReferenceError, match="same weights"):
        score_pairs(policy, pairs, reference=policy)
    with pytest.raises(SelfReferenceError):
        score_pairs(policy, pairs, reference=build_tiny_model(tokenizer, seed=1))  # a copy, not the object
    allowed = score_pairs(policy, pairs, reference=policy, allow_self_reference=True)
    assert reward_metrics(allowed.chosen_scores, allowed.rejected_scores)["reward_accuracy"] == 0.0


def test_mode_and_reference_must_agree(tokenizer, tiny_pair):
    policy, reference = tiny_pair
    with pytest.raises(DpoPluginsError, match="needs a reference"):
        score_pairs(policy, [], mode="dpo")
    with pytest.raises(DpoPluginsError, match="reference-free"):
        score_pairs(policy, [], reference=reference, mode="ref-free-sum")
    with pytest.raises(DpoPluginsError, match="expected one of"):
        score_pairs(policy, [], mode="ipo")


def short_hh_rows(tokenizer, count, max_prompt):
    """Real HH pairs whose templated prompt is short, so none is dropped and tests stay fast."""
    rows = [row for row in hh_rows(60) if len(tokenize_pair(row, tokenizer)["prompt_ids"]) < max_prompt]
    assert len(rows) >= count
    return rows[:count]


def trl_train_then_evaluate(model, reference, tokenizer, rows, max_length, steps, learning_rate):
    """Train ``model`` a few DPO steps with TRL on ``rows``, then TRL's own evaluate() on them."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir="trl-out", report_to=[], bf16=False, use_cpu=True, gradient_checkpointing=False,
                     max_length=max_length, learning_rate=learning_rate, max_steps=steps,
                     per_device_train_batch_size=2, per_device_eval_batch_size=len(rows), logging_steps=1,
                     save_strategy="no", seed=0, beta=0.1)
    dataset = Dataset.from_list(rows)
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=dataset,
                         eval_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    return trainer.evaluate()




def assert_matches_trl_and_straightforward(policy, reference, tokenizer, rows, max_length, tolerance, trl_metrics):
    policy.eval()
    pairs = [tokenize_pair(row, tokenizer) for row in rows]
    assert len(pairs) == len(rows)
    scores = score_pairs(policy, pairs, reference=reference, max_length=max_length, batch_size=4)
    metrics = reward_metrics(scores.chosen_scores, scores.rejected_scores)
    expected = straightforward_logratios(policy, reference, pairs, max_length=max_length)
    for got_chosen, got_rejected, (want_chosen, want_rejected) in zip(
        scores.chosen_logratios, scores.rejected_logratios, expected
    ):
        assert got_chosen == pytest.approx(want_chosen, abs=tolerance)
        assert got_rejected == pytest.approx(want_rejected, abs=tolerance)
    assert metrics["reward_accuracy"] == sum(c > r for c, r in expected) / len(pairs)
    # TRL logs beta * log-ratio; one eval batch holds every pair, so its means are over all pairs.
    correct = metrics["reward_accuracy"] * len(pairs)
    assert correct == round(trl_metrics["eval_rewards/accuracies"] * len(pairs))  # TRL's mean is float32
    assert metrics["reward_accuracy"] == pytest.approx(trl_metrics["eval_rewards/accuracies"], abs=1e-7)
    assert 0.1 * metrics["mean_margin"] == pytest.approx(trl_metrics["eval_rewards/margins"], abs=tolerance)
    mean_chosen = sum(scores.chosen_logratios) / len(pairs)
    assert 0.1 * mean_chosen == pytest.approx(trl_metrics["eval_rewards/chosen"], abs=tolerance)
    return metrics


def test_agrees_with_trl_evaluate_after_training_tiny_model(tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = short_hh_rows(tokenizer, 6, max_prompt=80)
    policy, reference = build_tiny_model(tokenizer, seed=0), build_tiny_model(tokenizer, seed=0)
    trl_metrics = trl_train_then_evaluate(policy, reference, tokenizer, rows, max_length=128, steps=3, learning_rate=1e-2)
    metrics = assert_matches_trl_and_straightforward(policy, reference, tokenizer, rows, 128, 1e-5, trl_metrics)
    assert 0 < metrics["reward_accuracy"] < 1 or metrics["reward_accuracy"] == 1 and metrics["reward_ties"] == 0


@pytest.mark.slow
def test_smollm2_on_real_hh_pairs_agrees_with_trl(smollm2_dir, tokenizer, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    monkeypatch.chdir(tmp_path)
    rows = short_hh_rows(tokenizer, 4, max_prompt=100)
    load = lambda: AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)  # noqa: E731
    policy, reference = load(), load()
    trl_metrics = trl_train_then_evaluate(policy, reference, tokenizer, rows, max_length=128, steps=1, learning_rate=1e-4)
    metrics = assert_matches_trl_and_straightforward(policy, reference, tokenizer, rows, 128, 1e-3, trl_metrics)
    assert math.isfinite(metrics["mean_margin"]) and metrics["reward_ties"] == 0
