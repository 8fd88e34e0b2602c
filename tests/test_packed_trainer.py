"""The trainer's default forward is the packed one, and it trains like stock TRL.

(The loss-by-loss parity tests in test_train.py run on this default too.)
"""

from __future__ import annotations

import pytest

from test_train import dpo_config, make_trainer, step_losses


def test_packed_is_the_default_and_losses_equal_stock_trl(tokenizer, tmp_path, packed_calls):
    from trl import DPOTrainer

    from dpo_plugins.adapters.trl import PluginDPOTrainer

    stock = make_trainer(DPOTrainer, tokenizer, dpo_config(tmp_path, "stock"))
    ours = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "ours"))
    stock.train()
    ours.train()
    assert len(packed_calls) == 2 * 3  # policy and reference, each of the 3 steps
    assert step_losses(ours) == pytest.approx(step_losses(stock), abs=1e-5, rel=0)
    assert len(set(round(x, 4) for x in step_losses(stock))) > 1
    # TRL's token metrics come from the packed head too
    for stock_entry, our_entry in zip(stock.state.log_history, ours.state.log_history):
        for key in ("entropy", "logits/chosen", "logits/rejected", "mean_token_accuracy", "rewards/margins"):
            if key in stock_entry:
                assert our_entry[key] == pytest.approx(stock_entry[key], abs=1e-4), key


def test_the_switch_gives_stock_behaviour(tokenizer, tmp_path, packed_calls):
    from dpo_plugins.adapters.trl import PluginDPOTrainer

    trainer = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "off", max_steps=1), packed_forward=False)
    trainer.train()
    assert packed_calls == []


def test_precomputed_reference_goes_through_the_disk_cache(tokenizer, tmp_path, monkeypatch, caplog):
    import logging

    from trl import DPOTrainer

    from dpo_plugins.adapters.trl import PluginDPOTrainer

    monkeypatch.setenv("DPO_PLUGINS_CACHE", str(tmp_path / "cache"))
    stock = make_trainer(DPOTrainer, tokenizer, dpo_config(tmp_path, "stock", precompute_ref_log_probs=True), with_reference=False)
    with caplog.at_level(logging.INFO, logger="dpo_plugins.train"):
        first = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "a", precompute_ref_log_probs=True), with_reference=False)
        second = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "b", precompute_ref_log_probs=True, beta=0.5), with_reference=False)
    assert "computed and cached" in caplog.text and "read from the cache" in caplog.text
    assert len(list((tmp_path / "cache" / "ref-logps").iterdir())) == 1
    assert first.train_dataset["ref_chosen_logps"] == pytest.approx(stock.train_dataset["ref_chosen_logps"], abs=1e-4)
    assert second.train_dataset["ref_rejected_logps"] == first.train_dataset["ref_rejected_logps"]
    stock.train()
    first.train()
    assert step_losses(first) == pytest.approx(step_losses(stock), abs=1e-5, rel=0)
